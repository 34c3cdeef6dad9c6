"""The audit log table.

Revision ID: audit_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create `audit_log` and the indexes its filters use."""
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("identity", sa.String(255), nullable=True),
        sa.Column("identity_kind", sa.String(16), nullable=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("route", sa.Text(), nullable=True),
        sa.Column("plugin", sa.String(255), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("action", sa.String(128), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        # AUTOINCREMENT: SQLite must never hand out an id again once retention removed it.
        sqlite_autoincrement=True,
    )
    # (column, id): a filter on the column and the newest-first order in one index scan.
    for column in ("identity", "tenant", "kind", "status", "action", "plugin"):
        op.create_index(f"ix_audit_log_{column}", "audit_log", [column, "id"])
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_index("ix_audit_log_request_id", "audit_log", ["request_id"])
    # text_pattern_ops lets PostgreSQL answer `path LIKE 'prefix%'` from the index
    # whatever the database's collation.
    op.create_index(
        "ix_audit_log_path", "audit_log", ["path"], postgresql_ops={"path": "text_pattern_ops"}
    )


def downgrade() -> None:
    """Drop `audit_log` with its indexes."""
    op.drop_table("audit_log")
