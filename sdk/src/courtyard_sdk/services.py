"""The runtime services a plugin reaches through its context: `ctx.db`, `ctx.events`,
`ctx.audit`. These are the interfaces; the runtime provides the implementations.

::

    @hookimpl
    def courtyard_routes(ctx: PluginContext) -> Blueprint:
        bp = Blueprint("notes", __name__)

        @bp.post("/notes")
        @require("notes:write")
        async def add() -> dict:
            async with ctx.db.session(tenant=require_tenant()) as session:
                session.add(Note(text=(await request.get_json())["text"]))
                await session.commit()
            await ctx.events.publish("notes.added", {"text": ...})
            return {"ok": True}

        return bp
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlmodel.ext.asyncio.session import AsyncSession


class Database(Protocol):
    """The runtime's database, as one plugin sees it.

    SQLite under the data directory unless `COURTYARD_DATABASE_URL` names another
    (PostgreSQL through asyncpg). A plugin's tables are created and upgraded by its own
    Alembic migrations (`migrations` in `plugin.toml`) before its startup hook runs.
    """

    @property
    def engine(self) -> AsyncEngine:
        """The async SQLAlchemy engine (one per runtime, shared by every plugin)."""
        ...

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        ...

    def session(self, *, tenant: str | None = None) -> AbstractAsyncContextManager[AsyncSession]:
        """A new SQLModel `AsyncSession` (`async with ctx.db.session() as s:`).

        :param tenant: scope the session to one tenant: every query on a model derived
            from `courtyard_sdk.db.TenantScoped` gets `WHERE tenant_id = :tenant`, and
            every such row added gets that tenant, so the session can neither read nor
            write another tenant's rows.
        """
        ...


@dataclass(frozen=True)
class Event:
    """One published event.

    :ivar id: unique and increasing within its bus; what SSE clients send back as
        `Last-Event-ID` to resume.
    :ivar topic: dotted name such as `queues.task.completed`.
    :ivar data: a JSON-serialisable value.
    :ivar time: Unix time of publication.
    """

    id: str
    topic: str
    data: Any
    time: float


class EventBus(Protocol):
    """Publish/subscribe between plugins and out to clients.

    In-process by default; through Redis (`COURTYARD_EVENT_BUS=redis`) when several
    runtime instances must see each other's events.
    """

    async def publish(self, topic: str, data: Any) -> Event:
        """Publish `data` (JSON-serialisable) on `topic` and return the event."""
        ...

    def subscribe(
        self, *patterns: str, last_event_id: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Receive events whose topic matches one of `patterns` (`*` matches any run of
        characters: `queues.*`), from now on, or from just after `last_event_id` while the
        bus still holds it::

            async with ctx.events.subscribe("queues.*") as events:
                async for event in events:
                    ...
        """
        ...


class AuditLog(Protocol):
    """The runtime's audit log. Mutating requests are recorded without any plugin code;
    plugins add their domain events."""

    async def record(
        self,
        action: str,
        *,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record `action` (such as `release.promoted`) by the current identity, in its
        tenant, with the current request id."""
        ...


__all__ = ["AuditLog", "Database", "Event", "EventBus"]
