"""A dependency that is down answers 503, not 500: the database, Redis or the disk.

A request that fails because a service the runtime depends on cannot be reached (or a
disk is full) is not a bug: `classify` names the outage, the request answers `503
DATABASE_UNAVAILABLE`, `503 REDIS_UNAVAILABLE` or `503 SERVICE_UNAVAILABLE` with
`Retry-After` (`507 INSUFFICIENT_STORAGE` naming the folder for a full disk), and the log
gets one line when an outage starts and then one per `LOG_INTERVAL` with a count, instead
of a traceback per request (a 10-second PostgreSQL outage under load was 3,000 of them).

Recognised by type, SQLSTATE and message, through the exception's causes: anything else
stays a 500 and is logged with its traceback, so that a bug is never hidden as an outage.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from courtyard_sdk import ApiError

from .redaction import redact

log = logging.getLogger("courtyard.outages")

RETRY_AFTER = 5  # seconds a client is asked to wait
LOG_INTERVAL = 10.0  # seconds between two log lines about the same outage

_FULL = (errno.ENOSPC, errno.EDQUOT)
_CONNECTION = (
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
)
# PostgreSQL's SQLSTATE classes and codes of an unavailable server (08: connection
# exception; 57P01-57P03: shut down, crashed, not accepting connections yet; 53300: too
# many connections) and of a full disk (53100).
_PG_DOWN_CLASSES = ("08",)
_PG_DOWN = ("57P01", "57P02", "57P03", "53300")
_PG_FULL = ("53100",)
# SQLite's messages for a database it cannot use now, and for a full disk.
_SQLITE_DOWN = ("database is locked", "disk i/o error", "unable to open database file")
_SQLITE_FULL = ("database or disk is full",)


@dataclass(frozen=True)
class Outage:
    """What a request that met an outage answers."""

    status: int
    code: str
    message: str

    def error(self) -> ApiError:
        """The answer, with `Retry-After`."""
        return ApiError(self.status, self.code, self.message, {"Retry-After": str(RETRY_AFTER)})


DATABASE = Outage(503, "DATABASE_UNAVAILABLE", "the database is unavailable; try again shortly")
REDIS = Outage(503, "REDIS_UNAVAILABLE", "Redis is unavailable; try again shortly")
SERVICE = Outage(503, "SERVICE_UNAVAILABLE", "a service the server needs is unavailable")


def full_disk(folder: str | Path | None) -> Outage:
    """The answer to a write that found no space left."""
    where = f" holding {folder}" if folder else ""
    return Outage(507, "INSUFFICIENT_STORAGE", f"no space left on the device{where}")


def classify(exc: BaseException) -> Outage | None:
    """The outage `exc` shows, if it is one (see the module docstring)."""
    for each in _causes(exc):
        if (found := _one(each, exc.__traceback__)) is not None:
            return found
    return None


def _one(exc: BaseException, traceback: TracebackType | None) -> Outage | None:
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if isinstance(exc, OSError) and exc.errno in _FULL:
        filename = exc.filename if isinstance(exc.filename, str) else None
        return full_disk(Path(filename).parent if filename else None)
    if name.startswith("redis.") and _redis_down(exc):
        return REDIS
    sqlstate = str(getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or "")
    if sqlstate in _PG_FULL:
        return full_disk(None)
    if sqlstate[:2] in _PG_DOWN_CLASSES or sqlstate in _PG_DOWN:
        return DATABASE
    if name.startswith("asyncpg.") and "ConnectionDoesNotExist" in name:
        return DATABASE
    if name.startswith("sqlite3.") or name.startswith("aiosqlite."):
        message = str(exc).lower()
        if any(m in message for m in _SQLITE_FULL):
            return full_disk(None)
        if any(m in message for m in _SQLITE_DOWN):
            return DATABASE
    if name in ("sqlalchemy.exc.TimeoutError", "sqlalchemy.exc.DisconnectionError"):
        return DATABASE  # no pooled connection to be had, or one that went away
    if getattr(exc, "connection_invalidated", False):
        return DATABASE
    if isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in _CONNECTION
    ):
        return _by_caller(traceback)
    return None


def _redis_down(exc: BaseException) -> bool:
    """redis-py's connection, timeout and loading errors (not a script or data error)."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    return bool(kinds & {"ConnectionError", "TimeoutError", "BusyLoadingError"})


def _by_caller(traceback: TracebackType | None) -> Outage:
    """A connection that failed: to the database or Redis, by the code it failed in."""
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("asyncpg", "aiosqlite", "sqlalchemy")):
            return DATABASE
        if module.startswith("redis"):
            return REDIS
        traceback = traceback.tb_next
    return SERVICE


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (SQLAlchemy's `orig` included), each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        each = pending.pop(0)
        if each is None or id(each) in seen:
            continue
        seen.add(id(each))
        yield each
        orig = getattr(each, "orig", None)
        pending += [
            orig if isinstance(orig, BaseException) else None,
            each.__cause__,
            each.__context__,
        ]


class OutageLog:
    """One log line when an outage starts, then one per `LOG_INTERVAL` with a count."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._counts: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def note(self, outage: Outage, exc: BaseException) -> None:
        """Count one request answered for `outage`; log if it is time to."""
        now = time.monotonic()
        count = self._counts.get(outage.code, 0) + 1
        since = self._since.get(outage.code)
        if since is None or now - since >= self.interval:
            first = since is None or count == 1
            log.warning(
                "%s: %s (%s: %s)",
                outage.code,
                "a request met it" if first else f"{count} requests met it since the last line",
                type(exc).__name__,
                redact(str(exc))[:300] or "no message",
            )
            self._since[outage.code] = now
            count = 0
        self._counts[outage.code] = count


__all__ = ["DATABASE", "REDIS", "SERVICE", "Outage", "OutageLog", "classify", "full_disk"]
