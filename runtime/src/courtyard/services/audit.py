"""The audit log: every mutating request, and the domain events plugins record.

Requests never wait on the database. An entry goes into a bounded in-memory queue, and
one background task (the writer) drains it, inserting up to `BATCH` entries per
transaction (it waits `LINGER` seconds after a first entry for others to join it). What a
hard crash (SIGKILL, power loss) can lose is what the queue held at that moment and the
batch being written: at most `QUEUE_SIZE` + `BATCH` entries, normally the last
`LINGER` seconds' worth. A clean stop (`Services.close()`) writes everything queued
first.

When the queue is full (the database is down or far slower than the traffic), a request
waits up to `FULL_WAIT` seconds for room, then its entry is dropped and counted; the
count is logged as a warning (at most every `WARN_INTERVAL` seconds, and at shutdown).
Entries are never dropped silently, and a request never waits longer than that.

With `audit_retention_days` above 0, entries older than that are deleted at start and
then once a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from .audit_entries import TABLE, event_entry

if TYPE_CHECKING:
    from ..settings import Settings
    from .database import Database

log = logging.getLogger("courtyard.audit")

OWNER = "courtyard-audit"
MIGRATIONS = Path(__file__).parent / "migrations" / "audit"
QUEUE_SIZE = 10_000  # entries waiting for the writer
BATCH = 500  # entries per INSERT transaction
LINGER = 0.05  # seconds the writer waits for more entries before writing a small batch
FULL_WAIT = 1.0  # seconds a request waits for room in a full queue before dropping
WARN_INTERVAL = 10.0  # seconds between two warnings about dropped entries
FLUSH_TIMEOUT = 10.0  # seconds a clean stop waits for the queue to be written
RETRY_MAX = 30.0  # seconds between two attempts at writing while the database fails
PURGE_INTERVAL = 24 * 3600.0
PURGE_CHUNK = 5_000  # rows per DELETE, so a large purge never holds the lock for long
_STOP = object()


class AuditLog:
    """The runtime's audit log service (`services.audit`); see the module docstring.

    :ivar enabled: the `audit` setting: when false nothing is recorded.
    :ivar written: entries written since start.
    :ivar dropped: entries lost since start (queue full, refused by the database, or
        still queued when a stop timed out); each loss is logged.
    """

    def __init__(self, settings: Settings, database: Database) -> None:
        self.enabled = settings.audit
        self.retention_days = settings.audit_retention_days
        self.database = database
        self.written = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._closing = False
        self._stopped = False
        self._in_flight = 0  # entries of the batch being written
        self._unreported = 0  # dropped since the last warning
        self._reported_at = 0.0
        self._why = ""

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer, and the retention task when `audit_retention_days` > 0
        (its table is made by the migrations `Services.start` applies first)."""
        if not self.enabled or self._writer is not None:
            return
        self._writer = asyncio.create_task(self._write_forever(), name="courtyard-audit-writer")
        if self.retention_days > 0:
            self._retention = asyncio.create_task(self._retain(), name="courtyard-audit-purge")

    async def close(self) -> None:
        """Write every queued entry (within `FLUSH_TIMEOUT`), then stop."""
        if self._writer is None or self._stopped:
            return
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        self._closing = True
        # Wakes a writer waiting on an empty queue; a full queue means it is busy, and it
        # stops once the queue is empty.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), FLUSH_TIMEOUT)
        except Exception as exc:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            left: list[dict[str, Any]] = []
            self._take_into(left, QUEUE_SIZE + 1)
            lost = len(left) + self._in_flight
            why = (
                f"the database did not accept them within {FLUSH_TIMEOUT:g} s"
                if isinstance(exc, TimeoutError)
                else f"the writer failed: {type(exc).__name__}: {exc}"
            )
            log.error("audit log: %d entr%s not written at shutdown: %s", lost, _y(lost), why)
            self._lose(lost)
        self._stopped = True
        self._report_drops(force=True)

    async def flush(self) -> None:
        """Wait until every entry queued so far is written (or, refused by the database,
        dropped and logged)."""
        if self._writer is not None and not self._stopped:
            await self._queue.join()

    # Recording ---------------------------------------------------------------------------

    async def add(self, entry: dict[str, Any]) -> None:
        """Queue `entry` (a row of `audit_log` without its id). Returns at once unless the
        queue is full; then waits up to `FULL_WAIT` seconds before dropping it."""
        if self._try_put(entry):
            return
        try:
            await asyncio.wait_for(self._queue.put(entry), FULL_WAIT)
        except TimeoutError:
            self._drop(1, f"queue full: {QUEUE_SIZE} entries waiting for the database")

    def add_nowait(self, entry: dict[str, Any]) -> None:
        """Queue `entry` without waiting (dropped and counted when the queue is full)."""
        if not self._try_put(entry):
            self._drop(1, f"queue full: {QUEUE_SIZE} entries waiting for the database")

    def _try_put(self, entry: dict[str, Any]) -> bool:
        """Queue `entry` if there is room: False when the queue is full. While the log is
        not running, the entry is dropped (and counted) and the answer is True."""
        if self._stopped or self._writer is None:
            if self.enabled:
                self._drop(1, "the audit log is not running")
            return True
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            return False
        return True

    async def record(
        self,
        action: str,
        *,
        plugin: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a domain event by the current identity (see `courtyard_sdk.services`).

        :raises ValueError, TypeError: `action`, `target` or `details` is not acceptable
            (checked even while the audit log is off, so that a plugin's mistake shows).
        """
        entry = event_entry(action, plugin=plugin, target=target, details=details)
        if self.enabled:
            await self.add(entry)

    def for_plugin(self, name: str) -> PluginAudit:
        """The audit log as plugin `name` sees it (`ctx.audit`)."""
        return PluginAudit(self, name)

    # Retention ---------------------------------------------------------------------------

    async def purge(self, now: datetime | None = None) -> int:
        """Delete entries older than `audit_retention_days` (none when it is 0).

        :return: how many were deleted.
        """
        if self.retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        doomed = select(TABLE.c.id).where(TABLE.c.time < cutoff).limit(PURGE_CHUNK)
        deleted = 0
        while True:
            async with self.database.engine.begin() as connection:
                result = await connection.execute(delete(TABLE).where(TABLE.c.id.in_(doomed)))
            deleted += result.rowcount or 0
            if (result.rowcount or 0) < PURGE_CHUNK:
                break
        if deleted:
            log.info(
                "audit log: purged %d entr%s older than %d day(s)",
                deleted,
                _y(deleted),
                self.retention_days,
            )
        return deleted

    async def _retain(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("audit log: purge failed; trying again in a day")
            await asyncio.sleep(PURGE_INTERVAL)

    # The writer ----------------------------------------------------------------------------

    def _take_into(self, batch: list[dict[str, Any]], limit: int) -> int:
        """Move up to `limit` queued entries into `batch`; return how many items (stop
        marks included) left the queue."""
        taken = 0
        while len(batch) < limit and not self._queue.empty():
            item = self._queue.get_nowait()
            taken += 1
            if item is not _STOP:
                batch.append(item)
        return taken

    async def _write_forever(self) -> None:
        while True:
            try:
                # While drops wait to be reported, wake up to report them in time.
                wait = WARN_INTERVAL if self._unreported else None
                first = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                self._report_drops()
                continue
            if first is not _STOP and not self._closing and self._queue.qsize() < BATCH - 1:
                # Let a few more arrive: one transaction for many entries costs the event
                # loop far less than one each.
                await asyncio.sleep(LINGER)
            batch = [] if first is _STOP else [first]
            taken = 1 + self._take_into(batch, BATCH - len(batch))
            if batch:
                self._in_flight = len(batch)  # what a cancelled write loses
                await self._write(batch)
                self._in_flight = 0
            for _ in range(taken):
                self._queue.task_done()  # for `flush`
            self._report_drops()
            if self._closing and self._queue.empty():
                # No await since the check: whatever comes later finds the log stopped.
                self._stopped = True
                return

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Insert `batch` in one transaction, retrying while the database is unavailable.
        Rows the database refuses (bad data) are written one by one, and those it still
        refuses are dropped and logged, so that one bad row cannot block the queue."""
        delay = 0.5
        while True:
            try:
                async with self.database.engine.begin() as connection:
                    await connection.execute(insert(TABLE), batch)
                self.written += len(batch)
                return
            except Exception as exc:
                if not _refused(exc):
                    error = exc
                elif len(batch) > 1:
                    for row in batch:
                        await self._write([row])
                    return
                else:
                    log.error("audit log: the database refused an entry (%s): %r", exc, batch)
                    self._lose(1)
                    return
            log.warning(
                "audit log: cannot write %d entr%s (%s: %s); retrying in %g s",
                len(batch),
                _y(len(batch)),
                type(error).__name__,
                (str(error).splitlines() or [""])[0],
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    # Losses ------------------------------------------------------------------------------

    def _lose(self, count: int) -> None:
        """Count entries lost and already logged."""
        self.dropped += count

    def _drop(self, count: int, why: str) -> None:
        """Count entries dropped; they are reported in the next warning."""
        self.dropped += count
        self._unreported += count
        self._why = why
        self._report_drops()

    def _report_drops(self, force: bool = False) -> None:
        if not self._unreported:
            return
        now = time.monotonic()
        if not force and now - self._reported_at < WARN_INTERVAL:
            return
        log.warning(
            "audit log: dropped %d entr%s (%s); %d dropped since start",
            self._unreported,
            _y(self._unreported),
            self._why,
            self.dropped,
        )
        self._unreported, self._reported_at = 0, now


class PluginAudit:
    """`ctx.audit`: the audit log as one plugin sees it; entries name the plugin."""

    def __init__(self, audit: AuditLog, plugin: str) -> None:
        self._audit = audit
        self.plugin = plugin

    async def record(
        self,
        action: str,
        *,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record `action` (such as `release.promoted`) on `target` by the current
        identity, in its tenant, with the current request id; `details` is a JSON object.

        Returns once the entry is queued: it is written moments later, off the request.

        :raises ValueError: an empty `action` or one over 128 characters, a `target` over
            1024 characters, `details` over 64 KiB of JSON or holding NaN or infinity.
        :raises TypeError: `action` or `target` not a string, `details` not a mapping of
            JSON values.
        """
        await self._audit.record(action, plugin=self.plugin, target=target, details=details)


def _y(count: int) -> str:
    """The ending of "entry" for `count`."""
    return "y" if count == 1 else "ies"


def _refused(exc: Exception) -> bool:
    """Whether the database refused the data itself (retrying cannot help), rather than
    being unreachable or busy."""
    if isinstance(exc, DBAPIError):
        if isinstance(exc, DataError | IntegrityError):
            return True
        # asyncpg's errors reach SQLAlchemy as plain DBAPIErrors: read the SQLSTATE class
        # (22 data exception, 23 integrity constraint violation).
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate[:2] in ("22", "23")
    return isinstance(exc, StatementError)  # a value its column type could not convert


__all__ = [
    "MIGRATIONS",
    "OWNER",
    "AuditLog",
    "PluginAudit",
]
