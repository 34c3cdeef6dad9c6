"""The hub bus: the memory bus of one of several server processes (`courtyard serve
--workers N`, `event_bus = "memory"`), through which every process sees every event.

The supervisor (servers/supervisor.py) holds the hub (servers/hub.py): one connection
per server process, a Unix socket pair it made and the process inherited (`use_hub`). A
publish goes to the hub, which gives the event its id (`<milliseconds>-<sequence>`, as
the memory bus does: one clock, so ids are the same and increase in every process),
keeps the last `event_history` events, and sends the event to every process, the
publisher included; each process then delivers it to its subscribers and holds it for
resumes exactly as `MemoryEventBus` does (its subclass here). The publisher's `publish`
returns once its own copy is back, with the id. A process (re)started later first gets
what the hub holds, so a client's `Last-Event-ID` resumes on any process.

If the connection to the hub breaks (the supervisor is gone, or dropped a process that
did not read its events), the process does not go on alone: it logs the error, every
subscription lags, publishes and subscribes are refused (`EventBusUnavailable`), and
`/api/health/ready` answers 503 (`events`).

The wire: lines of compact JSON, each one message.

- hub to process, first: `{"t": "hello", "floor": id, "last": id, "held": n}` (the
  memory bus's `_floor` and `_last`, and how many held events follow), then those
  events, then each new one: `{"t": "event", "id", "topic", "data", "time", "tenant"}`,
  with `"ref"` in the publisher's copy;
- process to hub: `{"t": "publish", "ref": n, "topic", "tenant", "data"}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from courtyard_sdk.events import MAX_EVENT_BYTES, parse_event_id
from courtyard_sdk.services import Event, EventBusUnavailable

from .events import QUEUE_SIZE, Key, MemoryEventBus, Subscription, make_event

log = logging.getLogger("courtyard.events")

LINE_LIMIT = 2 * MAX_EVENT_BYTES + 64 * 1024  # the longest message a side reads
HELLO_TIMEOUT = 10.0  # seconds the hub may take to greet a process that starts

_hub_fd: int | None = None


def use_hub(fd: int | None) -> None:
    """Make this process's event bus the hub bus, on the connection `fd` (a Unix stream
    socket): `make_event_bus` (services/__init__) then makes a `HubEventBus` (None: a
    `MemoryEventBus` again)."""
    global _hub_fd
    _hub_fd = fd


def hub_fd() -> int | None:
    """The hub connection `use_hub` named, or None (a single server process)."""
    return _hub_fd


class HubEventBus(MemoryEventBus):
    """The memory bus, its events numbered and shared by the hub (module docstring).

    :param fd: the connection to the hub.
    :param history: events kept for subscribers that resume (`event_history`), as the hub.
    """

    def __init__(self, fd: int, history: int = 1000, *, queue_size: int = QUEUE_SIZE) -> None:
        super().__init__(history, queue_size=queue_size)
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Event]] = {}
        self._refs = itertools.count(1)
        self.broken: str | None = None  # why the hub is out of reach, once it is

    async def start(self) -> None:
        """Connect to the hub and take what it holds.

        :raises EventBusUnavailable: the hub does not answer.
        """
        sock = socket.socket(fileno=self._fd)
        sock.set_inheritable(False)  # app workers and other children do not get it
        reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        try:
            hello = json.loads(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT))
            held = []
            for _ in range(int(hello["held"])):
                held.append(json.loads(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT)))
        except (TimeoutError, ValueError, KeyError, TypeError, OSError) as exc:
            self._writer.close()
            raise EventBusUnavailable(f"the event hub does not answer: {exc!r}") from None
        self._floor = parse_event_id(hello["floor"])
        self._last = parse_event_id(hello["last"])
        for message in held:  # as many as the history holds: nothing leaves it
            self._receive(message)
        self._reader = asyncio.create_task(self._read(reader), name="courtyard event hub")

    async def ping(self) -> None:
        """Answer while the hub is in reach (readiness.py).

        :raises EventBusUnavailable: it is not.
        """
        if self.broken is not None:
            raise EventBusUnavailable(f"the event hub is out of reach: {self.broken}")

    async def close(self) -> None:
        """End every subscription, leave the hub; later publishes are refused."""
        await super().close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        self._fail_pending("the event bus is closed")

    async def publish(self, topic: str, data: Any, *, tenant: str | None = None) -> Event:
        """Publish through the hub (see `courtyard_sdk.services.EventBus.publish`): the
        event comes back with its id, delivered here as in every other process."""
        if self._closed:
            raise EventBusUnavailable("the event bus is closed")
        if self.broken is not None:
            raise EventBusUnavailable(f"the event hub is out of reach: {self.broken}")
        if self._writer is None:
            raise EventBusUnavailable("not started")
        topic, text = make_event(topic, data, tenant)
        ref = next(self._refs)
        answer: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[ref] = answer
        head = json.dumps({"t": "publish", "ref": ref, "topic": topic, "tenant": tenant})
        try:
            # The data is JSON already (make_event checked it): sent as it is.
            self._writer.write(f'{head[:-1]}, "data": {text}}}\n'.encode())
            await self._writer.drain()
            return await answer
        except (ConnectionError, OSError) as exc:
            self._break(f"{type(exc).__name__}: {exc}")
            raise EventBusUnavailable(f"the event hub is out of reach: {self.broken}") from None
        finally:
            self._pending.pop(ref, None)

    @asynccontextmanager
    async def subscribe(
        self, *patterns: str, last_event_id: str | None = None, tenant: str | None = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe (see `courtyard_sdk.services.EventBus.subscribe`); refused once the
        hub is out of reach."""
        if self.broken is not None:
            raise EventBusUnavailable(f"the event hub is out of reach: {self.broken}")
        async with super().subscribe(
            *patterns, last_event_id=last_event_id, tenant=tenant
        ) as subscription:
            yield subscription

    # The connection -----------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._receive(json.loads(line))
            reason = "the supervisor closed the connection"
        except Exception as exc:  # a reader that stopped must say so, whatever stopped it
            reason = f"{type(exc).__name__}: {exc}"
        if not self._closed:
            self._break(reason)

    def _receive(self, message: dict[str, Any]) -> None:
        if message.get("t") != "event":
            return
        key: Key = parse_event_id(message["id"])
        event = Event(
            message["id"], message["topic"], message["data"], message["time"], message["tenant"]
        )
        self._last = key
        self._deliver(key, event)
        answer = self._pending.get(message.get("ref", 0))
        if answer is not None and not answer.done():
            answer.set_result(event)

    def _break(self, reason: str) -> None:
        """The hub is out of reach: stop sharing rather than diverge (module docstring)."""
        if self.broken is not None or self._closed:
            return
        self.broken = reason
        log.error(
            "lost the event hub (%s): this process no longer shares events with the "
            "other server processes; /api/health/ready answers 503",
            reason,
        )
        for subscriber in self._subscribers:
            subscriber.lag("the event hub is out of reach")
        self._subscribers.clear()
        self._fail_pending(f"the event hub is out of reach: {reason}")

    def _fail_pending(self, reason: str) -> None:
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(EventBusUnavailable(reason))
        self._pending.clear()


__all__ = ["HubEventBus", "hub_fd", "use_hub"]
