"""The shared store: what every instance of the runtime serves, in the database.

Every upload and removal of a plugin or an app version is recorded here, in one
transaction: the archive (content-addressed by its SHA-256), the install it now is
(`courtyard_installs`: kind, path, archive), and a numbered entry in the change log
(`courtyard_changes`). Reloads and key changes are logged too, without an archive. Each
instance follows the log (services/replication.py) and makes its folders match the
installs; it reports how far it got in `courtyard_instances`.

Revisions are the log's ids. Writers take a lock first (PostgreSQL: an advisory lock held
by the transaction; SQLite has one writer at a time anyway), so revisions commit in
order: a follower that has seen revision N has seen every revision below it.

With the embedded SQLite database this serves the processes of one `courtyard serve
--workers N`; with PostgreSQL, any number of instances on any number of machines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database

OWNER = "courtyard-cluster"
MIGRATIONS = Path(__file__).parent / "migrations" / "cluster"

# Kinds of change: an install or removal (`path` says what; `sha256` None for a removal),
# or a request to every instance (no path).
PLUGIN, APP, RELOAD, KEYS = "plugin", "app", "reload", "keys"
LOG_KEPT = timedelta(days=1)  # older log entries go; a follower that far behind reconciles
_LOCK_ID = 0x636F7572  # the advisory lock writers take on PostgreSQL ("cour")

_metadata = sa.MetaData()
ARCHIVES = sa.Table(
    "courtyard_archives",
    _metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # tar.gz or zip (archives.py)
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("content", sa.LargeBinary(), nullable=False),
)
INSTALLS = sa.Table(
    "courtyard_installs",
    _metadata,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("path", sa.String(512), primary_key=True),  # in the first plugin or app dir
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("instance", sa.String(128), nullable=False),
    sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
)
CHANGES = sa.Table(
    "courtyard_changes",
    _metadata,
    sa.Column(
        "revision",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("path", sa.String(512), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("instance", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
INSTANCES = sa.Table(
    "courtyard_instances",
    _metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("generation", sa.Integer(), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    # The plugins of installed distributions it serves (name -> version): each instance's
    # own, which the store does not replicate but shows side by side.
    sa.Column("entry_points", sa.JSON(), nullable=False),
    # The plugins its serving generation excluded: one that loads on the instance that
    # installed it may fail on another.
    sa.Column("failed", sa.JSON(), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)
SECRETS = sa.Table(
    "courtyard_secrets",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary(), nullable=False),
)


class AlreadyInstalled(Exception):
    """An exclusive install found its path taken (another instance won the race)."""


@dataclass(frozen=True)
class Archive:
    """An uploaded archive, as the store keeps it."""

    kind: str  # tar.gz or zip (archives.py)
    content: bytes

    @property
    def sha256(self) -> str:
        """Its address in the store."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Change:
    """One entry of the change log."""

    revision: int
    kind: str
    path: str | None
    sha256: str | None
    instance: str


@dataclass(frozen=True)
class Instance:
    """An instance as it last reported itself."""

    id: str
    host: str
    pid: int
    state: str
    generation: int
    revision: int
    entry_points: dict[str, str]
    failed: list[str]
    started_at: datetime
    seen_at: datetime


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their zone: they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _under(path: str) -> sa.ColumnElement[bool]:
    """The installs at `path` or inside it (an app's versions are inside the app)."""
    return sa.or_(INSTALLS.c.path == path, INSTALLS.c.path.startswith(path + "/"))


class Store:
    """The store's tables (see the module docstring)."""

    def __init__(self, database: Database, instance: str) -> None:
        """:param instance: the id of the instance writing, recorded with its changes."""
        self.database = database
        self.instance = instance

    async def _log(
        self,
        connection: AsyncConnection,
        kind: str,
        path: str | None = None,
        sha256: str | None = None,
    ) -> int:
        """Add a log entry: the first statement of every write, so that it takes the
        writers' lock before reading anything (module docstring). On SQLite a first write
        takes the database's write lock, with a fresh view of it."""
        if self.database.dialect == "postgresql":
            await connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
        at = now()
        result = await connection.execute(
            CHANGES.insert().values(
                kind=kind, path=path, sha256=sha256, instance=self.instance, at=at
            )
        )
        assert result.inserted_primary_key is not None  # an insert of one row
        revision = int(result.inserted_primary_key[0])
        await connection.execute(
            CHANGES.delete().where(CHANGES.c.at < at - LOG_KEPT, CHANGES.c.revision < revision)
        )
        return revision

    async def install(self, kind: str, path: str, archive: Archive, *, exclusive: bool) -> int:
        """Record that `path` now holds `archive`; return the change's revision.

        :param exclusive: refuse if `path` is installed already (an app version is
            immutable unless overwritten on purpose).
        :raises AlreadyInstalled: `exclusive`, and `path` is taken.
        """
        sha = archive.sha256
        try:
            async with self.database.engine.begin() as connection:
                revision = await self._log(connection, kind, path, sha)
                if exclusive:
                    taken = sa.select(INSTALLS.c.path).where(
                        INSTALLS.c.kind == kind, INSTALLS.c.path == path
                    )
                    if (await connection.execute(taken)).first() is not None:
                        raise AlreadyInstalled(path)  # the log entry is rolled back
                known = sa.select(ARCHIVES.c.sha256).where(ARCHIVES.c.sha256 == sha)
                if (await connection.execute(known)).first() is None:
                    await connection.execute(
                        ARCHIVES.insert().values(
                            sha256=sha,
                            kind=archive.kind,
                            size=len(archive.content),
                            content=archive.content,
                        )
                    )
                await connection.execute(
                    INSTALLS.delete().where(INSTALLS.c.kind == kind, INSTALLS.c.path == path)
                )
                await connection.execute(
                    INSTALLS.insert().values(
                        kind=kind,
                        path=path,
                        sha256=sha,
                        revision=revision,
                        instance=self.instance,
                        installed_at=now(),
                    )
                )
                await self._drop_unused_archives(connection)
        except IntegrityError as exc:  # the same path inserted at once by another writer
            raise AlreadyInstalled(path) from exc
        return revision

    async def remove(self, kind: str, path: str) -> int:
        """Record that nothing is installed at `path` or inside it; return the revision."""
        async with self.database.engine.begin() as connection:
            revision = await self._log(connection, kind, path)
            await connection.execute(INSTALLS.delete().where(INSTALLS.c.kind == kind, _under(path)))
            await self._drop_unused_archives(connection)
        return revision

    async def announce(self, kind: str, path: str | None = None) -> int:
        """Log a change the installs do not record (a reload, keys, a folder the store does
        not manage); return its revision."""
        async with self.database.engine.begin() as connection:
            return await self._log(connection, kind, path)

    async def _drop_unused_archives(self, connection: AsyncConnection) -> None:
        used = sa.select(INSTALLS.c.sha256)
        await connection.execute(ARCHIVES.delete().where(ARCHIVES.c.sha256.not_in(used)))

    async def head(self) -> int:
        """The latest revision (0 before any change)."""
        async with self.database.engine.connect() as connection:
            found = await connection.scalar(sa.select(sa.func.max(CHANGES.c.revision)))
        return int(found or 0)

    async def changes_after(self, revision: int) -> tuple[list[Change], bool]:
        """The log after `revision`, oldest first, and whether it is complete (False when
        entries after `revision` were already pruned: reconcile everything)."""
        async with self.database.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(CHANGES)
                    .where(CHANGES.c.revision > revision)
                    .order_by(CHANGES.c.revision)
                )
            ).all()
            if not rows:  # the usual answer of a poll: one query
                return [], True
            oldest = await connection.scalar(sa.select(sa.func.min(CHANGES.c.revision)))
        changes = [Change(r.revision, r.kind, r.path, r.sha256, r.instance) for r in rows]
        return changes, oldest is None or oldest <= revision + 1

    async def installs(self, kind: str) -> dict[str, str]:
        """What is installed of `kind`: path -> archive sha256."""
        query = sa.select(INSTALLS.c.path, INSTALLS.c.sha256).where(INSTALLS.c.kind == kind)
        async with self.database.engine.connect() as connection:
            return {row.path: row.sha256 for row in await connection.execute(query)}

    async def archive(self, sha256: str) -> Archive | None:
        """The archive with this address, if the store still holds it."""
        query = sa.select(ARCHIVES.c.kind, ARCHIVES.c.content).where(ARCHIVES.c.sha256 == sha256)
        async with self.database.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else Archive(row.kind, bytes(row.content))

    async def report(self, instance: Instance) -> None:
        """Record how far `instance` got (an upsert: delete and insert in one go)."""
        values = {
            "id": instance.id,
            "host": instance.host,
            "pid": instance.pid,
            "state": instance.state,
            "generation": instance.generation,
            "revision": instance.revision,
            "entry_points": instance.entry_points,
            "failed": instance.failed,
            "started_at": instance.started_at,
            "seen_at": instance.seen_at,
        }
        async with self.database.engine.begin() as connection:
            await connection.execute(INSTANCES.delete().where(INSTANCES.c.id == instance.id))
            await connection.execute(INSTANCES.insert().values(**values))

    async def forget_gone(self) -> None:
        """Forget instances not seen for a day: they are gone, not lagging."""
        async with self.database.engine.begin() as connection:
            gone = INSTANCES.c.seen_at < now() - LOG_KEPT
            await connection.execute(INSTANCES.delete().where(gone))

    async def leave(self, instance_id: str) -> None:
        """Forget an instance that stops (others no longer wait for it)."""
        async with self.database.engine.begin() as connection:
            await connection.execute(INSTANCES.delete().where(INSTANCES.c.id == instance_id))

    async def instances(self, seen_within: float) -> list[Instance]:
        """The instances seen in the last `seen_within` seconds, by id."""
        since = now() - timedelta(seconds=seen_within)
        query = sa.select(INSTANCES).where(INSTANCES.c.seen_at >= since).order_by(INSTANCES.c.id)
        async with self.database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_instance(row) for row in rows]

    async def secret(self, name: str, make: bytes) -> bytes:
        """The shared secret `name`; the first caller's `make` becomes it."""
        try:
            async with self.database.engine.begin() as connection:
                await connection.execute(SECRETS.insert().values(name=name, value=make))
        except IntegrityError:  # another instance made it first
            pass
        query = sa.select(SECRETS.c.value).where(SECRETS.c.name == name)
        async with self.database.engine.connect() as connection:
            value = await connection.scalar(query)
        assert value is not None  # inserted above, by this call or another
        return bytes(value)


def _instance(row: Any) -> Instance:
    return Instance(
        id=row.id,
        host=row.host,
        pid=row.pid,
        state=row.state,
        generation=row.generation,
        revision=int(row.revision),
        entry_points=dict(row.entry_points or {}),
        failed=list(row.failed or []),
        started_at=_utc(row.started_at),
        seen_at=_utc(row.seen_at),
    )
