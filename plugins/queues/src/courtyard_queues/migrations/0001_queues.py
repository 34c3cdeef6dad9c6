"""The SQL backend's tables: tasks, unique keys, paused queues, counters, configurations,
workers (see `tables.py`).

Revision ID: queues_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "queues_0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create every table and index."""
    op.create_table(
        "queues_task",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("timeout", sa.Float, nullable=False),
        sa.Column("max_retry", sa.Integer, nullable=False),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("last_failed_at", sa.Float),
        sa.Column("result", sa.Text),
        sa.Column("unique_key", sa.String(512)),
        sa.Column("process_at", sa.Float),
        sa.Column("ready_at", sa.Float),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("deadline", sa.Float),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float),
        sa.Column("expires_at", sa.Float),
        sa.Column("retention", sa.Float, nullable=False),
        sa.Column("archived_retention", sa.Float, nullable=False),
        sa.Column("pending_timeout", sa.Float, nullable=False),
        sa.Column("pending_deadline", sa.Float),
        sa.UniqueConstraint("id", name="uq_queues_task_id"),
    )
    op.create_index("ix_queues_task_ready", "queues_task", ["queue", "state", "ready_at", "seq"])
    op.create_index("ix_queues_task_listing", "queues_task", ["queue", "state", "seq"])
    op.create_index("ix_queues_task_due", "queues_task", ["state", "process_at"])
    op.create_index("ix_queues_task_lease", "queues_task", ["state", "lease_expires_at"])
    op.create_index("ix_queues_task_expires", "queues_task", ["expires_at"])
    op.create_index("ix_queues_task_pending_deadline", "queues_task", ["pending_deadline"])
    op.create_table(
        "queues_unique",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "queues_paused",
        sa.Column("queue", sa.String(200), primary_key=True),
        sa.Column("paused_at", sa.Float, nullable=False),
    )
    op.create_table(
        "queues_counter",
        sa.Column("queue", sa.String(200), primary_key=True),
        sa.Column("processed", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "queues_config",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "queues_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "queues_worker",
        sa.Column("worker_id", sa.String(200), primary_key=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_beat", sa.Float, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("active_tasks", sa.Text, nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
    )
    op.create_index("ix_queues_worker_last_beat", "queues_worker", ["last_beat"])


def downgrade() -> None:
    """Drop every table (and every task with them)."""
    op.drop_index("ix_queues_worker_last_beat", table_name="queues_worker")
    op.drop_table("queues_worker")
    op.drop_table("queues_meta")
    op.drop_table("queues_config")
    op.drop_table("queues_counter")
    op.drop_table("queues_paused")
    op.drop_table("queues_unique")
    for index in ("ready", "listing", "due", "lease", "expires", "pending_deadline"):
        op.drop_index(f"ix_queues_task_{index}", table_name="queues_task")
    op.drop_table("queues_task")
