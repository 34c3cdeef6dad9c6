"""The runners plugin's tables (created by `migrations/`), on the plugin's own model base.

Times are Unix seconds (double precision). JSON values (capabilities, metadata, steps,
configurations) are stored as text. A runner's registration token is stored as its
SHA-256 only. `seq` columns order jobs and log lines; a log line's `seq` is also the id
of its Server-Sent Event, so a client resumes a log stream from it.
"""

from __future__ import annotations

from courtyard_sdk.db import model_base
from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text
from sqlmodel import Field

Model = model_base()
# SQLite autoincrements only a column declared exactly INTEGER PRIMARY KEY.
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class RunnerRow(Model, table=True):
    """A registered runner: what it declared, its configuration and its last report."""

    __tablename__ = "runners_runner"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    type: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    host: str | None = Field(default=None, sa_column=Column(String(255)))
    port: int | None = Field(default=None, sa_column=Column(Integer))
    capabilities: str = Field(sa_column=Column(Text, nullable=False))
    meta: str = Field(sa_column=Column("metadata", Text, nullable=False))
    tags: str = Field(sa_column=Column(Text, nullable=False))
    resources: str = Field(sa_column=Column(Text, nullable=False))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    status: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    config: str = Field(sa_column=Column(Text, nullable=False))
    config_updated_at: float = Field(sa_column=Column(Float, nullable=False))
    restart_required: bool = Field(sa_column=Column(Boolean, nullable=False))
    control: str = Field(sa_column=Column(Text, nullable=False))
    load: str = Field(sa_column=Column(Text, nullable=False))
    report: str = Field(sa_column=Column(Text, nullable=False))
    last_heartbeat: float | None = Field(default=None, sa_column=Column(Float))
    first_heartbeat: float | None = Field(default=None, sa_column=Column(Float))
    registered_at: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))


class JobRow(Model, table=True):
    """A job submitted to one runner, through every attempt."""

    __tablename__ = "runners_job"
    __table_args__ = (
        Index("ix_runners_job_runner", "runner_id", "status", "seq"),
        Index("ix_runners_job_status", "status"),
    )

    seq: int | None = Field(default=None, sa_column=Column(SEQ, primary_key=True))
    id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    runner_id: str = Field(sa_column=Column(String(64), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    steps: str = Field(sa_column=Column(Text, nullable=False))
    environment: str = Field(sa_column=Column(Text, nullable=False))
    timeout: float | None = Field(default=None, sa_column=Column(Float))
    retry_count: int = Field(sa_column=Column(Integer, nullable=False))
    attempt: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    cancel_requested: bool = Field(sa_column=Column(Boolean, nullable=False))
    session: str | None = Field(default=None, sa_column=Column(String(64)))
    exit_code: int | None = Field(default=None, sa_column=Column(Integer))
    error: str | None = Field(default=None, sa_column=Column(Text))
    step_results: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float = Field(sa_column=Column(Float, nullable=False))
    started_at: float | None = Field(default=None, sa_column=Column(Float))
    completed_at: float | None = Field(default=None, sa_column=Column(Float))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))


class LogRow(Model, table=True):
    """One line of a runner's log: a job's output or a runner event."""

    __tablename__ = "runners_log"
    __table_args__ = (
        Index("ix_runners_log_runner", "runner_id", "seq"),
        Index("ix_runners_log_time", "runner_id", "ts"),
    )

    seq: int | None = Field(default=None, sa_column=Column(SEQ, primary_key=True))
    runner_id: str = Field(sa_column=Column(String(64), nullable=False))
    job_id: str | None = Field(default=None, sa_column=Column(String(64)))
    step: str | None = Field(default=None, sa_column=Column(String(200)))
    level: str = Field(sa_column=Column(String(8), nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))
    ts: float = Field(sa_column=Column(Float, nullable=False))


class SampleRow(Model, table=True):
    """One heartbeat's load, kept for the metrics (pruned past the longest period)."""

    __tablename__ = "runners_sample"
    __table_args__ = (Index("ix_runners_sample_runner", "runner_id", "ts"),)

    seq: int | None = Field(default=None, sa_column=Column(SEQ, primary_key=True))
    runner_id: str = Field(sa_column=Column(String(64), nullable=False))
    ts: float = Field(sa_column=Column(Float, nullable=False))
    cpu: float = Field(sa_column=Column(Float, nullable=False))
    memory: float = Field(sa_column=Column(Float, nullable=False))
    disk: float = Field(sa_column=Column(Float, nullable=False))
    active_jobs: int = Field(sa_column=Column(Integer, nullable=False))


RUNNERS: Table = RunnerRow.__table__  # type: ignore[attr-defined]
JOBS: Table = JobRow.__table__  # type: ignore[attr-defined]
LOGS: Table = LogRow.__table__  # type: ignore[attr-defined]
SAMPLES: Table = SampleRow.__table__  # type: ignore[attr-defined]
