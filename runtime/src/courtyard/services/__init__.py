"""The runtime's platform services, one set per process, shared by every generation:
the database, authentication, the event bus and the audit log.

They outlive reloads (a reload rebuilds plugins, not connections); plugins reach them
through their `PluginContext` (`ctx.db`, `ctx.events`, `ctx.audit`), the request path
through `Host.services`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..settings import Settings
from .database import Database

log = logging.getLogger("courtyard.services")


class Services:
    """Makes the services from the settings (no I/O), starts and closes them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.database)
        # (owner, folder of Alembic revisions) of each service that owns tables, in order.
        self.migrations: list[tuple[str, Path]] = []

    async def start(self) -> None:
        """Connect and bring the runtime's own tables up to date."""
        for owner, folder in self.migrations:
            await self.database.upgrade(owner, folder)

    async def close(self) -> None:
        """Release connections, in the reverse order of `start`."""
        await self.database.close()
