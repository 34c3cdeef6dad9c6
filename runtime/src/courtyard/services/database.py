"""The runtime's database: one async SQLAlchemy engine, sessions, per-owner migrations.

SQLite under the data directory by default (WAL, foreign keys on), PostgreSQL (asyncpg)
when `database_url` says so. Every owner of tables (a runtime service such as the API
keys, or a plugin) has its own Alembic revisions and its own version table,
`alembic_version_<owner>`, so each can be installed on an existing database and upgraded
on its own.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from courtyard_sdk.db import TenantScoped
from courtyard_sdk.names import slug
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, with_loader_criteria
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger("courtyard.database")
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


class TenantViolation(Exception):
    """A tenant-scoped session was asked to write another tenant's row."""


def async_url(url: str) -> str:
    """`url` with the async driver Courtyard uses for its dialect (`postgresql://` ->
    `postgresql+asyncpg://`); other drivers are refused."""
    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect not in _DRIVERS:
        raise ValueError(f"unsupported database {dialect!r}: use sqlite or postgresql")
    driver = _DRIVERS[dialect]
    if parsed.drivername not in (dialect, driver):
        raise ValueError(f"database driver {parsed.drivername!r}: use {driver}")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


class Database:
    """One engine for the whole runtime; see the module docstring.

    The engine is made on first use, so that building a `Database` costs nothing (the CLI
    makes one to list plugins).
    """

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self._engine: AsyncEngine | None = None

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return make_url(self.url).get_backend_name()

    @property
    def engine(self) -> AsyncEngine:
        """The async engine, made on first use."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> AsyncEngine:
        if self.dialect != "sqlite":
            return create_async_engine(self.url, pool_pre_ping=True)
        database = make_url(self.url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; NORMAL is durable across a process crash.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine

    @asynccontextmanager
    async def session(self, *, tenant: str | None = None) -> AsyncIterator[AsyncSession]:
        """A new session; with `tenant`, one that sees and writes only that tenant's rows
        of `TenantScoped` models (see `courtyard_sdk.services.Database.session`)."""
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            if tenant is not None:
                _scope_to_tenant(session.sync_session, tenant)
            yield session

    async def upgrade(self, owner: str, folder: Path) -> list[str]:
        """Apply `owner`'s Alembic revisions in `folder` up to its head.

        :return: the revisions applied, oldest first (empty when already current).
        """
        async with self.engine.begin() as connection:
            return await connection.run_sync(self._upgrade, owner, folder)

    async def current(self, owner: str, folder: Path) -> tuple[str | None, str | None]:
        """`owner`'s revision in the database and the head revision in `folder`."""
        async with self.engine.connect() as connection:
            return await connection.run_sync(self._current, owner, folder)

    def _environment(self, owner: str, folder: Path, fn: Any) -> tuple[EnvironmentContext, Any]:
        config = Config()
        config.set_main_option("script_location", str(folder))
        script = ScriptDirectory(str(folder), version_locations=[str(folder)])
        return EnvironmentContext(config, script, fn=fn), script

    def _upgrade(self, connection: Connection, owner: str, folder: Path) -> list[str]:
        if self.dialect == "postgresql":
            # Two instances starting together must not both run the same revisions.
            key = zlib.crc32(owner.encode()) & 0x7FFFFFFF
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        applied: list[str] = []

        def upgrade(revision: Any, _context: Any) -> Any:
            return script._upgrade_revs("heads", revision)

        environment, script = self._environment(owner, folder, upgrade)
        with environment:
            environment.configure(
                connection=connection,
                version_table=version_table(owner),
                on_version_apply=lambda *, step, **_: applied.append(step.up_revision_id),
                render_as_batch=self.dialect == "sqlite",
            )
            environment.run_migrations()
        if applied:
            log.info("%s: applied migration(s) %s", owner, ", ".join(applied))
        return applied

    def _current(
        self, connection: Connection, owner: str, folder: Path
    ) -> tuple[str | None, str | None]:
        from alembic.runtime.migration import MigrationContext

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table(owner)}
        )
        script = ScriptDirectory(str(folder), version_locations=[str(folder)])
        return context.get_current_revision(), script.get_current_head()

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def version_table(owner: str) -> str:
    """The table recording `owner`'s revision: `alembic_version_<owner>`."""
    return f"alembic_version_{slug(owner)}"


def _scope_to_tenant(session: Session, tenant: str) -> None:
    @event.listens_for(session, "do_orm_execute")
    def _only_this_tenant(state: Any) -> None:
        if not (state.is_select or state.is_update or state.is_delete):
            return
        for mapper in state.all_mappers:
            model = mapper.class_
            if issubclass(model, TenantScoped):
                state.statement = state.statement.options(
                    with_loader_criteria(model, model.tenant_id == tenant, include_aliases=True)
                )

    @event.listens_for(session, "before_flush")
    def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
        for row in (*session.new, *session.dirty):
            if not isinstance(row, TenantScoped):
                continue
            if row.tenant_id is None and row in session.new:
                row.tenant_id = tenant
            elif row.tenant_id != tenant:
                raise TenantViolation(
                    f"a session of tenant {tenant!r} cannot write a row of {row.tenant_id!r}"
                )
