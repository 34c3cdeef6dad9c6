"""Applying and inspecting one owner's Alembic revisions (see docs/database.md).

Each owner of tables has a folder of plain Alembic revision modules and a version table of
its own, `alembic_version_<owner>`. An upgrade applies every pending revision of one owner
in one transaction, under a lock that other instances upgrading the same owner wait for:
it is kept whole or not at all.

Alembic (about 12 MiB resident, with the mako and pygments it loads) is imported only when
there is something to do: a start whose database already records every owner's only head
(told from the revision files' literal `revision` and `down_revision`, see `_up_to_date`)
never loads it.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import logging
import re
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courtyard_sdk import CourtyardError
from courtyard_sdk.names import slug
from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

log = logging.getLogger("courtyard.database")
_MAX_IDENTIFIER = 63  # PostgreSQL cuts longer names silently: two owners could meet


class MigrationError(CourtyardError):
    """An owner's migrations could not be applied; nothing of them was kept."""


@dataclass(frozen=True)
class MigrationStatus:
    """One owner's migration state.

    :ivar current: the revision the database records (None: none applied yet).
    :ivar head: the newest revision of the owner's folder (None: the folder is empty).
    :ivar pending: the revisions an upgrade would apply, oldest first.
    :ivar known: False when the database records a revision the folder does not hold
        (the owner's code is older than its tables); an upgrade then refuses.
    """

    owner: str
    current: str | None
    head: str | None
    pending: list[str]
    known: bool

    @property
    def state(self) -> str:
        """`up to date`, `behind` or `unknown revision`."""
        if not self.known:
            return "unknown revision"
        return "behind" if self.pending else "up to date"


def version_table(owner: str) -> str:
    """The table recording `owner`'s revision: `alembic_version_<owner>` (a name that
    PostgreSQL would cut is shortened, with a hash of the whole to keep it unique)."""
    name = f"alembic_version_{slug(owner)}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:10]
    return f"{name[: _MAX_IDENTIFIER - 11]}_{digest}"


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def process_lock() -> asyncio.Lock:
    """Hold this around `upgrade`: one upgrade at a time in this process, since Alembic's
    `op` and `context` are module globals that a second upgrade running meanwhile would
    replace. (Instances in other processes wait on the database's lock instead.)"""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def upgrade(connection: Connection, owner: str, folder: Path) -> list[str]:
    """Apply `owner`'s pending revisions on `connection` (one outside any transaction).

    :return: the revisions applied, oldest first.
    :raises MigrationError: naming the revision that failed and why; all is rolled back.
    """
    if _up_to_date(connection, owner, folder):
        return []
    if connection.dialect.name != "sqlite":
        with connection.begin():
            # Two instances starting together must not both run the same revisions: the
            # second waits here, then finds them applied. Released at commit or rollback.
            key = zlib.crc32(version_table(owner).encode()) & 0x7FFFFFFF
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            return _apply(connection, owner, folder)
    # Foreign keys off, as SQLite's own procedure for schema changes says: rebuilding a
    # table (Alembic's batch mode) drops it, and with foreign keys on, that drop would
    # delete the rows of tables that refer to it with ON DELETE CASCADE. The pragma only
    # takes effect outside a transaction; foreign_key_check vouches for the result.
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        with connection.begin():
            # The driver would run DDL outside any transaction (each CREATE committed at
            # once) and take the write lock only at the first INSERT: BEGIN IMMEDIATE makes
            # the upgrade one transaction, which other processes wait for.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            applied = _apply(connection, owner, folder)
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                rows = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in broken[:5])
                raise MigrationError(
                    f"{owner}: the revisions leave foreign keys that point nowhere: {rows}"
                )
            return applied
    finally:
        try:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
        except Exception:
            connection.invalidate()  # never pool a connection without foreign keys
            raise


def _apply(connection: Connection, owner: str, folder: Path) -> list[str]:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = _script(owner, folder)
    steps: list[Any] = []
    applied: list[str] = []

    def upgrade(revision: Any, _context: Any) -> Any:
        steps.extend(script._upgrade_revs("heads", revision))
        return steps

    config = Config()
    config.set_main_option("script_location", str(folder))
    environment = EnvironmentContext(config, script, fn=upgrade)
    try:
        with environment:
            environment.configure(
                connection=connection,
                version_table=version_table(owner),
                on_version_apply=lambda *, step, **_: applied.append(step.up_revision_id),
            )
            environment.run_migrations()
    except Exception as exc:
        if len(steps) > len(applied):
            step = steps[len(applied)]
            where = f"revision {step.revision.revision} ({step.doc or 'no message'})"
        else:
            where = "reading the revisions"
        raise MigrationError(f"{owner}: {where} failed: {cause(exc)}") from exc
    if applied:
        log.info("%s: applied migration(s) %s", owner, ", ".join(applied))
    return applied


def status(connection: Connection, owner: str, folder: Path) -> MigrationStatus:
    """Where `owner` stands on `connection`.

    :raises MigrationError: when `folder` cannot be read as Alembic revisions.
    """
    from alembic.runtime.migration import MigrationContext

    script = _script(owner, folder)
    try:
        head = script.get_current_head()
    except Exception as exc:  # several heads
        raise MigrationError(f"{owner}: {cause(exc)}") from exc
    context = MigrationContext.configure(connection, opts={"version_table": version_table(owner)})
    current = context.get_current_revision()
    try:
        # Alembic's own `upgrade` passes its heads tuple here: the `str` annotation is narrow.
        steps = script._upgrade_revs("heads", (current,) if current else ())  # type: ignore[arg-type]
    except Exception:  # the database holds a revision this folder does not know
        return MigrationStatus(owner, current, head, [], known=False)
    return MigrationStatus(owner, current, head, [s.revision.revision for s in steps], True)


def _script(owner: str, folder: Path) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    if not folder.is_dir():
        raise MigrationError(f"{owner}: migrations folder {folder} does not exist")
    try:
        return ScriptDirectory(str(folder), version_locations=[str(folder)])
    except Exception as exc:
        raise MigrationError(f"{owner}: {cause(exc)}") from exc


def cause(exc: BaseException) -> str:
    """`Type: message`, with SQLAlchemy's statement dump and link left out."""
    original = getattr(exc, "orig", None) or exc
    message = str(original).strip().splitlines()
    return f"{type(original).__name__}: {message[0] if message else 'no message'}"


# The files Alembic reads as revisions (its own pattern, sourceless files left out).
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")


def _up_to_date(connection: Connection, owner: str, folder: Path) -> bool:
    """Whether the database records `folder`'s only head, and (SQLite) no foreign key
    points nowhere: then an upgrade has nothing to do, and Alembic need not be loaded.
    False in any doubt, and Alembic decides (see `_literal_head`). Ends the transaction
    its reads began."""
    head = _literal_head(folder)
    if head is None:
        return False
    name = version_table(owner)
    try:
        if not inspect(connection).has_table(name):
            return False
        quoted = connection.dialect.identifier_preparer.quote(name)
        rows = connection.exec_driver_sql(f"SELECT version_num FROM {quoted}")
        found = [tuple(row) for row in rows]
        if found != [(head,)]:
            return False
        if connection.dialect.name == "sqlite":
            return connection.exec_driver_sql("PRAGMA foreign_key_check").first() is None
        return True
    finally:
        connection.rollback()


def _literal_head(folder: Path) -> str | None:
    """The only head of the revisions in `folder`, read from each file's literal
    `revision` and `down_revision` without running it; None when Alembic must look: a file
    without them (or with `branch_labels` or `depends_on`), a revision named twice or
    pointing at one that is not there, several heads, or none."""
    try:
        paths = [p for p in folder.iterdir() if _REVISION_FILE.match(p.name) and p.is_file()]
    except OSError:
        return None
    downs: dict[str, tuple[str, ...]] = {}
    for path in paths:
        try:
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            return None
        values: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    values[target.id] = ...  # not a literal: unknown
        revision, down = values.get("revision"), values.get("down_revision", ...)
        if not isinstance(revision, str) or revision in downs:
            return None
        if values.get("branch_labels") is not None or values.get("depends_on") is not None:
            return None
        if down is None:
            downs[revision] = ()
        elif isinstance(down, str):
            downs[revision] = (down,)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            downs[revision] = tuple(down)
        else:
            return None
    pointed = {d for ds in downs.values() for d in ds}
    if not pointed <= downs.keys():
        return None
    heads = downs.keys() - pointed
    return next(iter(heads)) if len(heads) == 1 else None
