"""API keys: the `courtyard_api_keys` table (services/keys.py).

Revision ID: auth_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table of API keys."""
    op.create_table(
        "courtyard_api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_courtyard_api_keys_tenant_id", "courtyard_api_keys", ["tenant_id"])


def downgrade() -> None:
    """Drop the table of API keys."""
    op.drop_index("ix_courtyard_api_keys_tenant_id", table_name="courtyard_api_keys")
    op.drop_table("courtyard_api_keys")
