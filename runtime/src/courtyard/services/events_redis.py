"""The Redis event bus: several runtime instances share one stream of events.

Why a Redis stream (XADD, XREAD) and not PUBLISH: pub/sub forgets. A reader that is
disconnected for a moment (a Redis restart, a network blip) loses what was published
meanwhile, and there is nothing to resume a client's `Last-Event-ID` from. A stream gives
every event an ordered id (`<milliseconds>-<sequence>`), keeps the last ones (XADD
`MAXLEN ~`, at least `event_history` and `MIN_STREAM`), and lets a reader continue after
the last id it saw: a client's resume and the reader's own reconnection are the same
read.

One stream holds every topic, so ids are ordered across topics; topics are matched in
the process. One reader task per process (XREAD BLOCK on a connection of its own) hands
what it reads to the local subscribers; publishes and replays use a small pool.

An entry has the fields `t` (topic), `d` (the data as JSON), `s` (Unix time), `n` (the
tenant, if any) and `p`: the id of the entry before it. Trimming keeps no record of what
it removed, so `p` is how a resume tells whether the entries it needs are all still
there (`_complete`).

When Redis goes away the reader retries (backing off to 2 s) and keeps its subscribers.
Back, it continues after its last id when the stream still holds what follows it (a
network blip, a restart with persistence); when Redis lost events it had not read (a
restart without persistence), every subscription lags, and subscribers that resume learn
whether they missed anything (`Subscription.gap`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from courtyard_sdk.events import format_event_id, parse_event_id
from courtyard_sdk.services import Event, EventBusUnavailable
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .events import QUEUE_SIZE, Key, Subscription, make_event, subscription_filter

log = logging.getLogger("courtyard.events")

KEY = "courtyard:events"
MIN_STREAM = 1000  # the readers' buffer, whatever event_history says
BLOCK_MS = 5000
PAGE = 500
ZERO: Key = (0, 0)

# The clients decode responses: a stream entry is (id, fields), all str. XREAD answers
# None when it times out, [[stream, entries]] in RESP2 and {stream: entries} in RESP3.
_Entries = list[tuple[str, dict[str, str]]]
_Reply = dict[str, _Entries] | list[list[Any]] | None

# KEYS[1]: the stream; ARGV: max length, topic, JSON data, time, tenant ('' for none).
APPEND_SCRIPT = """
local fields = {'t', ARGV[2], 'd', ARGV[3], 's', ARGV[4]}
if ARGV[5] ~= '' then
  table.insert(fields, 'n'); table.insert(fields, ARGV[5])
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  table.insert(fields, 'p'); table.insert(fields, last[1][1])
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
"""


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1]))
    except ValueError:
        return "<redis_url>"


class _StreamState:
    """What XINFO STREAM says: the newest id ever added, and the first entry held."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.last = parse_event_id(info["last-generated-id"])
        first = info.get("first-entry")
        self.first: Key | None = parse_event_id(first[0]) if first else None
        previous = first[1].get("p") if first else None
        self.before_first: Key | None = parse_event_id(previous) if previous else None


def _complete(after: Key, state: _StreamState | None) -> bool:
    """Whether the stream holds every entry after `after`."""
    if state is None:  # no stream: complete only for a reader that never saw one
        return after == ZERO
    if after > state.last:  # an id Redis never gave out: it lost data since
        return False
    if state.first is None:  # entries were added, and all have been removed
        return after == state.last
    if state.before_first is not None:
        return after >= state.before_first
    # The first entry is the first of this stream: ids before it are from an older one.
    return after >= state.first or after == ZERO


class RedisEventBus:
    """Events shared through a Redis stream (see the module docstring).

    :param url: `redis_url`.
    :param history: `event_history`; the stream keeps at least `MIN_STREAM`.
    :param key: the stream's key (tests use one of their own).
    :raises ValueError: a URL redis-py does not understand.
    """

    def __init__(
        self,
        url: str,
        *,
        history: int = 1000,
        key: str = KEY,
        queue_size: int = QUEUE_SIZE,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.url, self.key, self.queue_size, self.block_ms = url, key, queue_size, block_ms
        self.maxlen = max(history, MIN_STREAM)
        # No automatic retries: a publish retried after a lost reply would be published
        # twice. Connections Redis closed are replaced before use anyway.
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2,
            "retry": Retry(NoBackoff(), 0),
        }
        self._client = Redis.from_url(url, socket_timeout=5, **options)
        # The reader's XREAD BLOCK returns every `block_ms`; a dead connection is found by
        # TCP keepalive (redis-py's default: about 45 s). No socket timeout also keeps
        # redis-py off `asyncio.wait_for` for sends, which on Python 3.11 can swallow the
        # cancellation that stops the reader.
        self._reader_client = Redis.from_url(
            url, socket_timeout=None, single_connection_client=True, **options
        )
        self._append = self._client.register_script(APPEND_SCRIPT)
        self._cursor: Key = ZERO  # the reader's position: the last id it read
        self._subscribers: set[Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions of this process (for tests and monitoring)."""
        return len(self._subscribers)

    async def start(self) -> None:
        """Check that Redis answers and start the reader, from the stream's end.

        :raises EventBusUnavailable: Redis does not answer.
        """
        try:
            await self._client.ping()
            state = await self._state()
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(
                f"cannot reach Redis at {redact(self.url)} (redis_url): {exc}"
            ) from None
        self._cursor = state.last if state else ZERO
        self._reader = asyncio.create_task(self._read(), name="courtyard event reader")

    async def ping(self) -> None:
        """Check that Redis answers (readiness.py).

        :raises RedisError: it does not.
        """
        await self._client.ping()

    async def close(self) -> None:
        """Stop the reader, end every subscription, close the connections."""
        self._closed = True
        while self._reader is not None and not self._reader.done():
            self._reader.cancel()  # again if a library swallowed it (see __init__)
            await asyncio.wait({self._reader}, timeout=0.1)
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
        await self._reader_client.aclose()
        await self._client.aclose()

    def _check_open(self) -> None:
        if self._closed or self._reader is None:
            raise EventBusUnavailable("the event bus is closed" if self._closed else "not started")

    async def publish(self, topic: str, data: Any, *, tenant: str | None = None) -> Event:
        """Append an event to the stream (see `courtyard_sdk.services.EventBus.publish`)."""
        self._check_open()
        topic, text = make_event(topic, data, tenant)
        now = time.time()
        try:
            entry_id = await self._append(
                keys=[self.key], args=[self.maxlen, topic, text, repr(now), tenant or ""]
            )
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(
                f"cannot publish {topic!r}: Redis at {redact(self.url)}: {exc}"
            ) from None
        return Event(entry_id, topic, json.loads(text), now, tenant)

    @asynccontextmanager
    async def subscribe(
        self, *patterns: str, last_event_id: str | None = None, tenant: str | None = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe (see `courtyard_sdk.services.EventBus.subscribe`). A resume reads
        the stream after `last_event_id` while the live events queue up behind."""
        wants = subscription_filter(patterns, tenant)
        after = None if last_event_id is None else parse_event_id(last_event_id)
        self._check_open()
        subscription = Subscription(wants, after or self._cursor, queue_size=self.queue_size)
        self._subscribers.add(subscription)  # first: nothing published from now is missed
        try:
            if after is not None:
                await self._resume(subscription, after, wants)
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription.close()

    async def _resume(
        self, subscription: Subscription, after: Key, wants: Callable[[Event], bool]
    ) -> None:
        try:
            state = await self._state()
            subscription.gap = not _complete(after, state)
            if state is None or after > state.last:  # nothing of it is held
                subscription.restart_at(state.last if state else ZERO)
                return
            held: list[Event] = []
            start = after
            while True:
                entries = cast(
                    _Entries,
                    await self._client.xrange(
                        self.key, min=f"({format_event_id(start)}", max="+", count=PAGE
                    ),
                )
                for entry_id, fields in entries:
                    event = self._event(entry_id, fields)
                    if event is not None and wants(event):
                        held.append(event)
                if len(entries) < PAGE:
                    break
                start = parse_event_id(entries[-1][0])
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(
                f"cannot replay events: Redis at {redact(self.url)}: {exc}"
            ) from None
        subscription.replay(held)

    async def _state(self) -> _StreamState | None:
        try:
            return _StreamState(await self._client.xinfo_stream(self.key))
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise

    def _event(self, entry_id: str, fields: dict[str, str]) -> Event | None:
        try:
            return Event(
                entry_id, fields["t"], json.loads(fields["d"]), float(fields["s"]), fields.get("n")
            )
        except (KeyError, ValueError) as exc:  # someone else wrote to our stream
            log.warning("skipping malformed entry %s of %s: %r", entry_id, self.key, exc)
            return None

    # The reader ---------------------------------------------------------------------------

    async def _read(self) -> None:
        """Read the stream for as long as the bus is open, handing events out."""
        delay, down = 0.1, False
        while not self._closed:
            try:
                if down:
                    await self._recover()
                    log.info("Redis is back; the event reader continues after %s", self._cursor)
                    delay, down = 0.1, False
                reply = cast(
                    _Reply,
                    await self._reader_client.xread(
                        {self.key: format_event_id(self._cursor)}, count=PAGE, block=self.block_ms
                    ),
                )
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError):
                    log.exception("event reader failed; retrying")
                elif not down:
                    log.warning(
                        "event reader lost Redis (%s: %s); retrying", type(exc).__name__, exc
                    )
                down = True  # the reader must not die: check the stream when back
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            # RESP2 gives [[stream, entries]], RESP3 (`?protocol=3`) {stream: entries}.
            for _stream, entries in reply.items() if isinstance(reply, dict) else reply or []:
                for entry_id, fields in entries:
                    self._cursor = parse_event_id(entry_id)
                    event = self._event(entry_id, fields)
                    if event is not None:
                        self._hand_out(event)

    def _hand_out(self, event: Event) -> None:
        for subscriber in [s for s in self._subscribers if s.wants(event)]:
            if not subscriber.offer(event):
                self._subscribers.discard(subscriber)

    async def _recover(self) -> None:
        """After an outage: continue after the cursor if the stream still holds what
        follows it; else make every subscription lag and start again from the end."""
        state = await self._state()
        if _complete(self._cursor, state):
            return
        log.warning(
            "Redis lost events the reader had not read (restarted without persistence?); "
            "%d subscription(s) must resume",
            len(self._subscribers),
        )
        for subscriber in self._subscribers:
            subscriber.lag("Redis lost events")
        self._subscribers.clear()
        self._cursor = state.last if state else ZERO
