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

    :ivar id: `<milliseconds>-<sequence>`, unique and increasing within its bus (across
        topics); what SSE clients send back as `Last-Event-ID` to resume.
    :ivar topic: dotted name such as `queues.task.completed`.
    :ivar data: the published value, as JSON gives it back (tuples become lists): every
        subscriber, local or on another instance, sees the same value. Treat it as
        read-only: subscribers of one process share it.
    :ivar time: Unix time of publication.
    :ivar tenant: the tenant the event belongs to, if it was published for one.
    """

    id: str
    topic: str
    data: Any
    time: float
    tenant: str | None = None


class EventError(ValueError):
    """The bus refused a topic, a pattern, an event id or data that is not JSON (or too
    large); the message says which and why."""


class EventBusUnavailable(RuntimeError):
    """The bus cannot publish or replay right now: Redis does not answer, or the bus is
    closed. Nothing was published."""


class SubscriptionLagged(Exception):
    """Raised by a subscription's iterator, after the events it still held, when it fell
    behind: its subscriber did not keep up (its queue of pending events is bounded), or
    the Redis bus lost events it had not read. Subscribe again with `last_event_id` to
    continue where it stopped (`Subscription.gap` then says whether events are missing).

    :ivar last_event_id: the id of the last event delivered (or the subscription's
        starting point, if none was).
    """

    def __init__(self, last_event_id: str, reason: str) -> None:
        super().__init__(f"subscription lagged ({reason}); resume from {last_event_id}")
        self.last_event_id = last_event_id
        self.reason = reason


class Subscription(Protocol):
    """An open subscription: an async iterator of the matching events, in id order.

    Iteration ends when the subscription or the bus closes, and raises
    `SubscriptionLagged` when the subscriber fell behind.
    """

    @property
    def gap(self) -> bool:
        """True when it was opened with a `last_event_id` from which the bus could not
        replay every later event (they left the history, or came before a restart): some
        events were missed. The events the bus still holds are replayed anyway."""
        ...

    @property
    def last_event_id(self) -> str:
        """Where this subscription stands: the id of the last event it delivered, or of
        the point it started from. A new subscription from here misses nothing the bus
        still holds."""
        ...

    def __aiter__(self) -> AsyncIterator[Event]:
        """The subscription itself."""
        ...

    async def __anext__(self) -> Event:
        """The next matching event; waits for one."""
        ...


class EventBus(Protocol):
    """Publish/subscribe between plugins and out to clients.

    In-process by default; through Redis (`COURTYARD_EVENT_BUS=redis`) when several
    runtime instances must see each other's events. `courtyard_sdk.events` streams a
    subscription to clients (Server-Sent Events, WebSockets).
    """

    async def publish(self, topic: str, data: Any, *, tenant: str | None = None) -> Event:
        """Publish `data` (JSON-serialisable, at most 1 MiB as JSON) on `topic` and return
        the event.

        :param topic: dot-separated words of letters, digits, `_`, `-` and `:`
            (`notes.added`), at most 200 characters; `courtyard.` is the runtime's.
        :param tenant: the tenant the event belongs to: a subscription for one tenant
            sees only its events.
        :raises EventError: a bad topic, or data that is not JSON or too large.
        :raises EventBusUnavailable: Redis does not answer, or the bus is closed.
        """
        ...

    def subscribe(
        self, *patterns: str, last_event_id: str | None = None, tenant: str | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Receive the events whose topic matches one of `patterns` (`*` matches any run
        of characters, dots included: `queues.*`; `?` one character), from now on, or
        from just after `last_event_id`::

            async with ctx.events.subscribe("queues.*") as events:
                async for event in events:
                    ...

        :param tenant: only the events published for this tenant (None: every event).
        :raises EventError: no pattern, a bad pattern, or a malformed `last_event_id`.
        :raises EventBusUnavailable: the bus is closed, or (with `last_event_id`, on
            Redis) cannot replay.
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


__all__ = [
    "AuditLog",
    "Database",
    "Event",
    "EventBus",
    "EventBusUnavailable",
    "EventError",
    "Subscription",
    "SubscriptionLagged",
]
