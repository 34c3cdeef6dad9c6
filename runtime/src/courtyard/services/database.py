"""The runtime's database: one async SQLAlchemy engine, sessions, per-owner migrations.

SQLite under the data directory by default (WAL, foreign keys on), PostgreSQL (asyncpg)
when `database_url` says so. Every owner of tables (a runtime service such as the API
keys, or a plugin) has its own Alembic revisions and its own version table,
`alembic_version_<owner>`, so each can be installed on an existing database and upgraded
on its own. See docs/database.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from courtyard_sdk import StartupError
from courtyard_sdk.db import TenantViolation
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from ..database_urls import async_url
from . import revisions
from .revisions import MigrationError, MigrationStatus, version_table
from .tenancy import require_tenant_ids, scope_to_tenant

_CONNECT_TIMEOUT = 10.0  # seconds; asyncpg's own default (60 s) stalls a start too long


class Database:
    """One engine for the whole runtime; see the module docstring.

    The engine is made on first use, so that building a `Database` costs nothing (the CLI
    makes one to list plugins).
    """

    def __init__(self, url: str) -> None:
        """:raises SettingsError: when `url` is not a URL Courtyard can use."""
        self.url = async_url(url)
        self._engine: AsyncEngine | None = None

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return make_url(self.url).get_backend_name()

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        """The async engine, made on first use."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> AsyncEngine:
        url = make_url(self.url)
        if self.dialect != "sqlite":
            connect_args = {} if "timeout" in url.query else {"timeout": _CONNECT_TIMEOUT}
            return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if url.database and not url.database.startswith("file:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

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

    async def start(self) -> None:
        """Connect once, so that a database that cannot be reached refuses the start with
        a clear message instead of failing every request later.

        :raises StartupError: naming the database (password hidden) and the cause.
        """
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise StartupError(
                f"cannot connect to the database {self.safe_url}: {revisions.cause(exc)}"
            ) from None

    @asynccontextmanager
    async def session(self, *, tenant: str | None = None) -> AsyncIterator[AsyncSession]:
        """A new session; with `tenant`, one that sees and writes only that tenant's rows
        of `TenantScoped` models (see `courtyard_sdk.services.Database.session`).

        :raises TenantViolation: (on flush or execute) when a tenant's session is asked to
            write another tenant's row.
        """
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            if tenant is not None:
                scope_to_tenant(session.sync_session, tenant)
            else:
                require_tenant_ids(session.sync_session)
            yield session

    async def upgrade(self, owner: str, folder: Path) -> list[str]:
        """Apply `owner`'s Alembic revisions in `folder` up to its head, all of them in one
        transaction, holding a lock that other instances upgrading `owner` wait for.

        :return: the revisions applied, oldest first (empty when already current).
        :raises MigrationError: naming the revision that failed and why; no revision of
            this call is kept.
        """
        try:
            async with revisions.process_lock(), self.engine.connect() as connection:
                return await connection.run_sync(revisions.upgrade, owner, folder)
        except MigrationError:
            raise
        except Exception as exc:  # a lock or commit that failed
            raise MigrationError(f"{owner}: {revisions.cause(exc)}") from exc

    async def status(self, owner: str, folder: Path) -> MigrationStatus:
        """Where `owner` stands: its revision, the head, and the revisions to apply.

        :raises MigrationError: when `folder` cannot be read as Alembic revisions.
        """
        async with self.engine.connect() as connection:
            return await connection.run_sync(revisions.status, owner, folder)

    async def current(self, owner: str, folder: Path) -> tuple[str | None, str | None]:
        """`owner`'s revision in the database and the head revision in `folder`.

        :raises MigrationError: when `folder` cannot be read as Alembic revisions.
        """
        found = await self.status(owner, folder)
        return found.current, found.head

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


__all__ = [
    "Database",
    "MigrationError",
    "MigrationStatus",
    "TenantViolation",
    "async_url",
    "version_table",
]
