"""Whether this instance can do its work: the database answers, Redis answers (when the
event bus uses it; `events`: the hub of several server processes is in reach, see
events_hub.py), the data folder's disk has room. `/api/health/ready` answers 503
while one of them fails, so that a load balancer routes around the instance.

Each look is bounded (`TIMEOUT`) and its result kept for `CACHE_SECONDS`: probes every
second from several balancers cost one look.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import TYPE_CHECKING

from sqlalchemy import text

from .events_hub import HubEventBus

if TYPE_CHECKING:
    from pathlib import Path

    from .database import Database
    from .events import MemoryEventBus
    from .events_redis import RedisEventBus

TIMEOUT = 2.0  # seconds one dependency may take to answer
CACHE_SECONDS = 1.0
MIN_FREE_BYTES = 1024 * 1024  # less free space than this in the data folder: full


class Readiness:
    """The checks, cached (see the module docstring)."""

    def __init__(
        self, database: Database, events: MemoryEventBus | RedisEventBus, data_dir: Path
    ) -> None:
        self.database = database
        self.events = events
        self.data_dir = data_dir
        self._last: tuple[float, dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def problems(self) -> dict[str, str]:
        """What fails now, by dependency (`database`, `redis` or `events`, `disk`); empty
        when ready."""
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < CACHE_SECONDS:
                return self._last[1]
            found: dict[str, str] = {}
            # The bus's own check: Redis, or the hub of several server processes.
            bus = "events" if isinstance(self.events, HubEventBus) else "redis"
            for name, check in (
                ("database", self._database),
                (bus, self._bus),
                ("disk", self._disk),
            ):
                try:
                    await asyncio.wait_for(check(), TIMEOUT)
                except TimeoutError:
                    found[name] = f"no answer within {TIMEOUT:g} s"
                except Exception as exc:
                    found[name] = f"{type(exc).__name__}: {exc}"[:300]
            self._last = (time.monotonic(), found)
            return found

    async def _database(self) -> None:
        async with self.database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _bus(self) -> None:
        await self.events.ping()

    async def _disk(self) -> None:
        folder = self.data_dir  # or, before anything was written, where it will be
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = (await asyncio.to_thread(shutil.disk_usage, folder)).free
        if free < MIN_FREE_BYTES:
            raise OSError(f"{free} bytes free in {self.data_dir}")


__all__ = ["Readiness"]
