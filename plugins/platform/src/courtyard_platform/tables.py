"""The platform's tables (created by `migrations/`): projects, operations, their steps,
and the source commits already turned into CI operations.

Times are naive UTC. JSON documents (a project's spec, its deployments, an operation's
parameters, a step's artifacts) are stored as text. `platform_project.active_op_id` is
the one-active-operation lock: it is taken and released only while the project's row is
locked (see `store.py`).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

METADATA = MetaData()

PROJECTS = Table(
    "platform_project",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("name", String(63), nullable=False),
    Column("spec", Text, nullable=False),
    Column("phase", String(32), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("last_op_id", String(32), nullable=True),
    Column("last_op_kind", String(16), nullable=True),
    Column("active_op_id", String(32), nullable=True),
    Column("deployments", Text, nullable=False, default="{}"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("name", name="uq_platform_project_name"),
)

OPS = Table(
    "platform_op",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=False, default=""),
    Column("params", Text, nullable=False, default="{}"),
    Column("requested_at", DateTime, nullable=False),
    Column("started_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
)

STEPS = Table(
    "platform_step",
    METADATA,
    Column("op_id", String(32), nullable=False),
    Column("position", Integer, nullable=False),
    Column("worker", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("artifacts", Text, nullable=False, default="[]"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("task_id", String(64), nullable=True),
    Column("consumer", String(200), nullable=True),
    Column("started_at", DateTime, nullable=True),
    Column("ended_at", DateTime, nullable=True),
    PrimaryKeyConstraint("op_id", "position", name="pk_platform_step"),
)

COMMITS = Table(
    "platform_commit",
    METADATA,
    Column("project_id", String(32), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("op_id", String(32), nullable=True),
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("project_id", "commit", name="pk_platform_commit"),
)
