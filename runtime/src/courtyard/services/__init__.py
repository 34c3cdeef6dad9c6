"""The runtime's platform services, one set per process, shared by every generation:
the database, authentication, the event bus, the audit log and the shared store.

They outlive reloads (a reload rebuilds plugins, not connections); plugins reach them
through their `PluginContext` (`ctx.db`, `ctx.events`, `ctx.audit`), the request path
through `Dispatcher.services`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings, check_event_bus
from . import audit, keys, store
from .auth import Auth
from .database import Database
from .events import MemoryEventBus
from .events_hub import HubEventBus, hub_fd
from .readiness import Readiness
from .replication import instance_id
from .store import Store

if TYPE_CHECKING:
    # redis-py (about 7 MiB resident) is imported only for the Redis bus.
    from .events_redis import RedisEventBus

log = logging.getLogger("courtyard.services")


def make_event_bus(settings: Settings) -> MemoryEventBus | RedisEventBus:
    """The bus the settings ask for (no I/O: `start()` connects).

    :raises SettingsError: see `courtyard.settings.check_event_bus`.
    """
    check_event_bus(settings)
    if settings.event_bus == "memory":
        # One of several server processes: the events go through the supervisor's hub.
        if (fd := hub_fd()) is not None:
            return HubEventBus(fd, settings.event_history)
        return MemoryEventBus(settings.event_history)
    assert settings.redis_url is not None
    from .events_redis import RedisEventBus

    return RedisEventBus(settings.redis_url, history=settings.event_history)


class Services:
    """Makes the services from the settings (no I/O), starts and closes them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.database)
        # (owner, folder of Alembic revisions) of each service that owns tables, in order.
        self.migrations: list[tuple[str, Path]] = []
        self.audit = audit.AuditLog(settings, self.database)
        self.migrations.append((audit.OWNER, audit.MIGRATIONS))
        self.auth = Auth(settings, self.database)
        self.migrations.append((keys.OWNER, keys.MIGRATIONS))
        # What every instance serves (services/store.py).
        self.store = Store(self.database, instance_id(settings.instance_id))
        self.migrations.append((store.OWNER, store.MIGRATIONS))
        # The event bus (services/events.py); a bad event_bus setting refuses here.
        self.events = make_event_bus(settings)
        self.readiness = Readiness(self.database, self.events, settings.data_dir)

    async def start(self) -> None:
        """Connect and bring the runtime's own tables up to date."""
        await self.database.start()  # an unreachable database refuses the start, clearly
        for owner, folder in self.migrations:
            await self.database.upgrade(owner, folder)
        await self.audit.start()
        await self.auth.start()
        if self.database.dialect == "postgresql":  # instances on other machines share it
            secret = await self.store.secret("session", secrets.token_bytes(32))
            self.auth.sessions.share(secret)
        await self.events.start()  # an unreachable Redis refuses the start

    async def close(self) -> None:
        """Release connections, in the reverse order of `start`."""
        await self.events.close()
        await self.auth.close()
        await self.audit.close()  # writes what is queued: before the database closes
        await self.database.close()
