"""Runners, their jobs, log lines and heartbeat samples (see `tables.py`).

Revision ID: runners_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "runners_0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create every table and index."""
    op.create_table(
        "runners_runner",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("port", sa.Integer),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("resources", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("config_updated_at", sa.Float, nullable=False),
        sa.Column("restart_required", sa.Boolean, nullable=False),
        sa.Column("control", sa.Text, nullable=False),
        sa.Column("load", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("last_heartbeat", sa.Float),
        sa.Column("first_heartbeat", sa.Float),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_runners_runner_token_hash"),
    )
    op.create_index("ix_runners_runner_type", "runners_runner", ["type"])
    op.create_index("ix_runners_runner_status", "runners_runner", ["status"])
    op.create_table(
        "runners_job",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("runner_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("environment", sa.Text, nullable=False),
        sa.Column("timeout", sa.Float),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("session", sa.String(64)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("step_results", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("completed_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("id", name="uq_runners_job_id"),
    )
    op.create_index("ix_runners_job_runner", "runners_job", ["runner_id", "status", "seq"])
    op.create_index("ix_runners_job_status", "runners_job", ["status"])
    op.create_table(
        "runners_log",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("runner_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("step", sa.String(200)),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_index("ix_runners_log_runner", "runners_log", ["runner_id", "seq"])
    op.create_index("ix_runners_log_time", "runners_log", ["runner_id", "ts"])
    op.create_table(
        "runners_sample",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("runner_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory", sa.Float, nullable=False),
        sa.Column("disk", sa.Float, nullable=False),
        sa.Column("active_jobs", sa.Integer, nullable=False),
    )
    op.create_index("ix_runners_sample_runner", "runners_sample", ["runner_id", "ts"])


def downgrade() -> None:
    """Drop every table (runners, jobs, logs and samples with them)."""
    op.drop_index("ix_runners_sample_runner", table_name="runners_sample")
    op.drop_table("runners_sample")
    op.drop_index("ix_runners_log_time", table_name="runners_log")
    op.drop_index("ix_runners_log_runner", table_name="runners_log")
    op.drop_table("runners_log")
    op.drop_index("ix_runners_job_status", table_name="runners_job")
    op.drop_index("ix_runners_job_runner", table_name="runners_job")
    op.drop_table("runners_job")
    op.drop_index("ix_runners_runner_status", table_name="runners_runner")
    op.drop_index("ix_runners_runner_type", table_name="runners_runner")
    op.drop_table("runners_runner")
