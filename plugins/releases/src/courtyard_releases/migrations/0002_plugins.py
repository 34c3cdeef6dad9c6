"""The tenants' plugin settings and plugin instances (see `plugin_registry.py`).

Revision ID: releases_0002
Revises: releases_0001
Create Date: 2026-12-04T22:18:35+00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "releases_0002"
down_revision: str | None = "releases_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the tables and their indexes."""
    op.create_table(
        "releases_plugin_instance",
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("plugin_id", sqlmodel.sql.sqltypes.AutoString(length=214), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "plugin_id", "name", name="uq_releases_instance_name"),
    )
    op.create_index(
        op.f("ix_releases_plugin_instance_plugin_id"),
        "releases_plugin_instance",
        ["plugin_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_releases_plugin_instance_tenant_id"),
        "releases_plugin_instance",
        ["tenant_id"],
        unique=False,
    )
    op.create_table(
        "releases_plugin_setting",
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("plugin", sqlmodel.sql.sqltypes.AutoString(length=214), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "plugin", name="uq_releases_plugin"),
    )
    op.create_index(
        op.f("ix_releases_plugin_setting_tenant_id"),
        "releases_plugin_setting",
        ["tenant_id"],
        unique=False,
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_index(
        op.f("ix_releases_plugin_setting_tenant_id"), table_name="releases_plugin_setting"
    )
    op.drop_table("releases_plugin_setting")
    op.drop_index(
        op.f("ix_releases_plugin_instance_tenant_id"), table_name="releases_plugin_instance"
    )
    op.drop_index(
        op.f("ix_releases_plugin_instance_plugin_id"), table_name="releases_plugin_instance"
    )
    op.drop_table("releases_plugin_instance")
