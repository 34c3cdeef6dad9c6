"""The event bus: `MemoryEventBus` in the process (the default), `RedisEventBus`
(events_redis.py) shared by several runtime instances, and `HubEventBus` (events_hub.py),
the memory bus of each of several server processes (`courtyard serve --workers N`),
shared through their supervisor; `make_event_bus` (services/__init__) picks one from the
settings. All implement `courtyard_sdk.services.EventBus`.

Ids are `<milliseconds>-<sequence>` in both (Redis stream ids; the memory bus makes them
the same way), so they increase across topics and across restarts, and a client's
`Last-Event-ID` can be compared with what the bus holds: a resume replays the held events
after it, and says (`Subscription.gap`) when some after it are no longer held.

Each subscriber has a bounded queue. A subscriber that lets it fill up does not hold
the publisher back nor grow memory: it is dropped from the bus, gets the events already
queued, then `SubscriptionLagged` with the id to resume from (the SDK's stream helpers
resume by themselves, from the bus's history).

Call the buses from the runtime's event loop only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from courtyard_sdk.events import (
    RETIRING,
    check_topic,
    encode_data,
    format_event_id,
    parse_event_id,
    topic_matcher,
)
from courtyard_sdk.services import Event, EventBusUnavailable, EventError, SubscriptionLagged

if TYPE_CHECKING:
    from quart import Quart


log = logging.getLogger("courtyard.events")

QUEUE_SIZE = 1000
"""Events a subscriber may have pending before it lags (see the module docstring)."""
Key = tuple[int, int]  # a parsed event id


class Subscription:
    """One subscriber's view of a bus (see `courtyard_sdk.services.Subscription`).

    The bus `offer`s it the events that match, in id order; it yields first the replayed
    events, then the queued ones, skipping any id it has already passed (a Redis resume
    may see an event both in its replay and live).
    """

    def __init__(
        self,
        wants: Callable[[Event], bool],
        position: Key,
        *,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.wants = wants
        self.gap = False
        self._position = position
        self._replay: deque[Event] = deque()
        self._queue: deque[Event] = deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        self._lagged: str | None = None  # why it lagged
        self._closed = False

    @property
    def last_event_id(self) -> str:
        """The id of the last event delivered, or of the starting point."""
        return format_event_id(self._position)

    @property
    def open(self) -> bool:
        """Whether the bus still feeds it."""
        return self._lagged is None and not self._closed

    def replay(self, events: Iterable[Event]) -> None:
        """Put held events ahead of the live ones."""
        self._replay.extend(events)
        self._wake.set()

    def restart_at(self, key: Key) -> None:
        """Start from `key` instead: the bus holds nothing of the position asked for."""
        self._position = key

    def offer(self, event: Event) -> bool:
        """Queue `event`; False when the queue is full, which makes the subscription lag."""
        if len(self._queue) >= self._queue_size:
            self.lag(f"more than {self._queue_size} events pending")
            return False
        self._queue.append(event)
        self._wake.set()
        return True

    def lag(self, reason: str) -> None:
        """Stop feeding it: once its queue is empty, iteration raises SubscriptionLagged."""
        if self._lagged is None and not self._closed:
            self._lagged = reason
            self._wake.set()

    def close(self) -> None:
        """End iteration (once the events already queued are delivered)."""
        self._closed = True
        self._wake.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        # The only await is the wait below, so a cancelled call loses no event.
        while True:
            source = self._replay or self._queue
            if source:
                event = source.popleft()
                key = parse_event_id(event.id)
                if key <= self._position:
                    continue  # delivered already (a Redis resume sees it twice)
                self._position = key
                return event
            if self._lagged is not None:
                raise SubscriptionLagged(self.last_event_id, self._lagged)
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


def subscription_filter(patterns: tuple[str, ...], tenant: str | None) -> Callable[[Event], bool]:
    """The test of which events a subscription wants.

    :raises EventError: no pattern or a bad one.
    """
    matches = topic_matcher(patterns)
    if tenant is None:
        return lambda event: matches(event.topic)
    return lambda event: event.tenant == tenant and matches(event.topic)


def make_event(topic: str, data: Any, tenant: str | None) -> tuple[str, str]:
    """Check an event to publish: its topic and its data as JSON.

    :raises EventError: see `EventBus.publish`.
    """
    check_topic(topic)
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise EventError(f"invalid tenant {tenant!r}: a non-empty string or None")
    return topic, encode_data(topic, data)


class MemoryEventBus:
    """Events within one process; the last `history` kept for resumes.

    :param history: events kept for subscribers that resume (`event_history`).
    :param queue_size: see `QUEUE_SIZE`.
    """

    def __init__(self, history: int = 1000, *, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._history: deque[tuple[Key, Event]] = deque(maxlen=history)
        # Every id after `_floor` is held: a resume from `_floor` or later is complete.
        # At first, the moment the bus was made: anything older came before a restart.
        self._floor: Key = (time.time_ns() // 1_000_000, 0)
        self._last: Key = self._floor
        self._subscribers: set[Subscription] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions (for tests and monitoring)."""
        return len(self._subscribers)

    async def start(self) -> None:
        """Nothing to connect to."""

    async def ping(self) -> None:
        """Always answers: the bus is in this process (see `RedisEventBus.ping`)."""

    async def close(self) -> None:
        """End every subscription; later publishes and subscribes are refused."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()

    def _next_id(self) -> Key:
        # Redis's rule: the clock's millisecond, or the last one again with the next
        # sequence number when the clock has not moved on (or went back).
        now = time.time_ns() // 1_000_000
        self._last = (now, 0) if now > self._last[0] else (self._last[0], self._last[1] + 1)
        return self._last

    async def publish(self, topic: str, data: Any, *, tenant: str | None = None) -> Event:
        """Publish an event (see `courtyard_sdk.services.EventBus.publish`)."""
        if self._closed:
            raise EventBusUnavailable("the event bus is closed")
        topic, text = make_event(topic, data, tenant)
        key = self._next_id()
        event = Event(format_event_id(key), topic, json.loads(text), time.time(), tenant)
        self._deliver(key, event)
        return event

    def _deliver(self, key: Key, event: Event) -> None:
        """Hold `event` (id `key`, newer than every event held) and hand it to the
        subscribers that want it; one that lags is dropped (the hub bus, events_hub.py,
        delivers the events the hub numbered through here too)."""
        if self._history.maxlen == 0:
            self._floor = key
        else:
            if len(self._history) == self._history.maxlen:
                self._floor = self._history[0][0]  # about to leave the history
            self._history.append((key, event))
        for subscriber in [s for s in self._subscribers if s.wants(event)]:
            if not subscriber.offer(event):
                self._subscribers.discard(subscriber)

    @asynccontextmanager
    async def subscribe(
        self, *patterns: str, last_event_id: str | None = None, tenant: str | None = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe (see `courtyard_sdk.services.EventBus.subscribe`)."""
        wants = subscription_filter(patterns, tenant)
        after = None if last_event_id is None else parse_event_id(last_event_id)
        if self._closed:
            raise EventBusUnavailable("the event bus is closed")
        # No await from here to the registration: no event can slip in between.
        if after is None or after > self._last:  # from the future: not from this bus
            subscription = Subscription(wants, self._last, queue_size=self.queue_size)
            subscription.gap = after is not None
        else:
            subscription = Subscription(wants, after, queue_size=self.queue_size)
            subscription.gap = after < self._floor
            subscription.replay(self._held_after(after, wants))
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription.close()

    def _held_after(self, after: Key, wants: Callable[[Event], bool]) -> list[Event]:
        newer: list[Event] = []
        for key, event in reversed(self._history):  # resumes are mostly near the end
            if key <= after:
                break
            if wants(event):
                newer.append(event)
        newer.reverse()
        return newer


# The runtime's own events ---------------------------------------------------------------


async def announce(bus: Any, topic: str, data: Any) -> None:
    """Publish a runtime event; a failure is logged, never raised (a reload must not
    fail because Redis is down)."""
    try:
        await bus.publish(topic, data)
    except Exception as exc:
        log.warning("could not publish %s: %s: %s", topic, type(exc).__name__, exc)


def end_streams(app: Quart | None) -> None:
    """Tell the event streams served by `app` to end: their clients reconnect, to the
    generation that serves next (see `courtyard_sdk.events.retiring_signal`)."""
    if app is not None and isinstance(signal := app.extensions.get(RETIRING), asyncio.Event):
        signal.set()
