"""The platform's tables: projects, operations, steps and processed source commits.

Revision ID: platform_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four tables."""
    op.create_table(
        "platform_project",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("last_op_id", sa.String(32), nullable=True),
        sa.Column("last_op_kind", sa.String(16), nullable=True),
        sa.Column("active_op_id", sa.String(32), nullable=True),
        sa.Column("deployments", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_platform_project_name"),
    )
    op.create_table(
        "platform_op",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_platform_op_project_id", "platform_op", ["project_id"])
    op.create_table(
        "platform_step",
        sa.Column("op_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("artifacts", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("consumer", sa.String(200), nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.PrimaryKeyConstraint("op_id", "position", name="pk_platform_step"),
    )
    op.create_table(
        "platform_commit",
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("op_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "commit", name="pk_platform_commit"),
    )


def downgrade() -> None:
    """Drop the four tables."""
    op.drop_table("platform_commit")
    op.drop_table("platform_step")
    op.drop_index("ix_platform_op_project_id", table_name="platform_op")
    op.drop_table("platform_op")
    op.drop_table("platform_project")
