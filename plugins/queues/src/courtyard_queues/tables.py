"""The SQL backend's tables (created by `migrations/`), on the plugin's own model base.

Times are Unix seconds (double precision), which both SQLite and PostgreSQL compare and
add to cheaply. JSON values (payloads, results, configurations) are stored as text.
`seq` orders tasks (enqueue order) and is the key a task listing resumes from.
"""

from __future__ import annotations

from courtyard_sdk.db import model_base
from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text
from sqlmodel import Field

Model = model_base()
# SQLite autoincrements only a column declared exactly INTEGER PRIMARY KEY.
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class TaskRow(Model, table=True):
    """One task, whatever its state."""

    __tablename__ = "queues_task"
    __table_args__ = (
        Index("ix_queues_task_ready", "queue", "state", "ready_at", "seq"),
        Index("ix_queues_task_listing", "queue", "state", "seq"),
        Index("ix_queues_task_due", "state", "process_at"),
        Index("ix_queues_task_lease", "state", "lease_expires_at"),
        Index("ix_queues_task_expires", "expires_at"),
        Index("ix_queues_task_pending_deadline", "pending_deadline"),
    )

    seq: int | None = Field(default=None, sa_column=Column(SEQ, primary_key=True))
    id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    queue: str = Field(sa_column=Column(String(200), nullable=False))
    type: str = Field(sa_column=Column(String(200), nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    timeout: float = Field(sa_column=Column(Float, nullable=False))
    max_retry: int = Field(sa_column=Column(Integer, nullable=False))
    retry_count: int = Field(sa_column=Column(Integer, nullable=False))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_failed_at: float | None = Field(default=None, sa_column=Column(Float))
    result: str | None = Field(default=None, sa_column=Column(Text))
    unique_key: str | None = Field(default=None, sa_column=Column(String(512)))
    process_at: float | None = Field(default=None, sa_column=Column(Float))
    ready_at: float | None = Field(default=None, sa_column=Column(Float))
    lease_owner: str | None = Field(default=None, sa_column=Column(String(200)))
    lease_expires_at: float | None = Field(default=None, sa_column=Column(Float))
    started_at: float | None = Field(default=None, sa_column=Column(Float))
    deadline: float | None = Field(default=None, sa_column=Column(Float))
    cancel_requested: bool = Field(sa_column=Column(Boolean, nullable=False))
    created_at: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))
    completed_at: float | None = Field(default=None, sa_column=Column(Float))
    expires_at: float | None = Field(default=None, sa_column=Column(Float))
    retention: float = Field(sa_column=Column(Float, nullable=False))
    archived_retention: float = Field(sa_column=Column(Float, nullable=False))
    pending_timeout: float = Field(sa_column=Column(Float, nullable=False))
    pending_deadline: float | None = Field(default=None, sa_column=Column(Float))


class UniqueRow(Model, table=True):
    """A unique key held by a task until it finishes or `expires_at`."""

    __tablename__ = "queues_unique"

    key: str = Field(sa_column=Column(String(512), primary_key=True))
    task_id: str = Field(sa_column=Column(String(64), nullable=False))
    expires_at: float = Field(sa_column=Column(Float, nullable=False))


class PausedRow(Model, table=True):
    """A paused queue."""

    __tablename__ = "queues_paused"

    queue: str = Field(sa_column=Column(String(200), primary_key=True))
    paused_at: float = Field(sa_column=Column(Float, nullable=False))


class CounterRow(Model, table=True):
    """A queue's counters of ended attempts and of failed ones."""

    __tablename__ = "queues_counter"

    queue: str = Field(sa_column=Column(String(200), primary_key=True))
    processed: int = Field(sa_column=Column(BigInteger, nullable=False))
    failed: int = Field(sa_column=Column(BigInteger, nullable=False))


class ConfigRow(Model, table=True):
    """A queue configuration (its runqy YAML entry as JSON) and where it came from."""

    __tablename__ = "queues_config"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    source: str = Field(sa_column=Column(Text, nullable=False))
    document: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))


class MetaRow(Model, table=True):
    """Small named counters (`config_version`)."""

    __tablename__ = "queues_meta"

    key: str = Field(sa_column=Column(String(64), primary_key=True))
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class WorkerRow(Model, table=True):
    """A registered worker and its last heartbeat."""

    __tablename__ = "queues_worker"

    worker_id: str = Field(sa_column=Column(String(200), primary_key=True))
    queue: str = Field(sa_column=Column(String(200), nullable=False))
    status: str = Field(sa_column=Column(String(64), nullable=False))
    started_at: float = Field(sa_column=Column(Float, nullable=False))
    last_beat: float = Field(sa_column=Column(Float, nullable=False, index=True))
    concurrency: int = Field(sa_column=Column(Integer, nullable=False))
    active_tasks: str = Field(sa_column=Column(Text, nullable=False))
    hostname: str = Field(sa_column=Column(String(255), nullable=False))
    version: str = Field(sa_column=Column(String(64), nullable=False))


TASKS: Table = TaskRow.__table__  # type: ignore[attr-defined]
UNIQUE: Table = UniqueRow.__table__  # type: ignore[attr-defined]
PAUSED: Table = PausedRow.__table__  # type: ignore[attr-defined]
COUNTERS: Table = CounterRow.__table__  # type: ignore[attr-defined]
CONFIGS: Table = ConfigRow.__table__  # type: ignore[attr-defined]
META: Table = MetaRow.__table__  # type: ignore[attr-defined]
WORKERS: Table = WorkerRow.__table__  # type: ignore[attr-defined]
