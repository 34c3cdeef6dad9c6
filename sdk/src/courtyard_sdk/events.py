"""Streaming events to clients, and the rules every event bus shares.

A plugin streams its events in a few lines, as Server-Sent Events or over a WebSocket::

    from courtyard_sdk import Blueprint, PluginContext, hookimpl
    from courtyard_sdk.events import sse_response, stream_to_websocket
    from courtyard_sdk.identity import require

    @hookimpl
    def courtyard_routes(ctx: PluginContext) -> Blueprint:
        bp = Blueprint("notes", __name__)

        @bp.get("/events")
        @require("notes:read")
        async def events():
            return sse_response(ctx.events, "notes.*")

        @bp.websocket("/ws")
        async def ws():
            await stream_to_websocket(ctx.events, "notes.*")

        return bp

Both resume where a client left off (SSE: the `Last-Event-ID` header EventSource sends
when it reconnects; both: a `lastEventId` query parameter), tell the client with a
`courtyard.gap` notice when events it missed are no longer held, and end when the
generation serving them retires (a reload) or the server stops, so that the client
reconnects to the new one without losing an event. See docs/events.md.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from quart import Response, current_app, has_app_context, request, websocket

from .errors import ApiError
from .services import (
    Event,
    EventBus,
    EventBusUnavailable,
    EventError,
    Subscription,
    SubscriptionLagged,
)

MAX_TOPIC_LENGTH = 200
MAX_EVENT_BYTES = 1024 * 1024
GAP_TOPIC = "courtyard.gap"
"""The topic of the notice a stream sends when events after the client's last id are
no longer held (its data: `{"lastEventId": ...}`)."""
RETIRING = "courtyard.retiring"
"""The key, in a Quart app's `extensions`, of the `asyncio.Event` the runtime sets when
the generation the app serves retires or the server stops."""
LAST_EVENT_ID_PARAM = "lastEventId"

_TOPIC = re.compile(r"[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*")
_PATTERN = re.compile(r"[A-Za-z0-9_:.*?-]+")
_EVENT_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")


# The rules: topics, patterns, ids, data --------------------------------------------------


def check_topic(topic: object) -> str:
    """Return `topic` if the bus accepts it (see `EventBus.publish`).

    :raises EventError: naming the problem.
    """
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        raise EventError(
            f"invalid topic {topic!r}: use dot-separated words of letters, digits, "
            "'_', '-' and ':' (notes.added)"
        )
    if len(topic) > MAX_TOPIC_LENGTH:
        raise EventError(f"topic {topic[:40]!r}... is longer than {MAX_TOPIC_LENGTH} characters")
    return topic


def topic_matcher(patterns: tuple[str, ...] | list[str]) -> Callable[[str], bool]:
    """A test of whether a topic matches one of `patterns` (`*` any run of characters,
    `?` one character; case matters).

    :raises EventError: no pattern, or one with other characters than a topic's, `*`, `?`.
    """
    if not patterns:
        raise EventError("subscribe to at least one topic pattern ('*' for every topic)")
    for pattern in patterns:
        if (
            not isinstance(pattern, str)
            or not _PATTERN.fullmatch(pattern)
            or len(pattern) > MAX_TOPIC_LENGTH
        ):
            raise EventError(
                f"invalid topic pattern {pattern!r}: use a topic's characters, with '*' "
                "for any run of characters and '?' for one"
            )
    if "*" in patterns:
        return lambda topic: True
    regex = re.compile("|".join(fnmatch.translate(p) for p in patterns))
    return lambda topic: regex.match(topic) is not None


def parse_event_id(text: object) -> tuple[int, int]:
    """`"1700000000000-3"` -> `(1700000000000, 3)`: ids compare as these pairs.

    :raises EventError: when `text` is not an event id.
    """
    match = _EVENT_ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise EventError(f"invalid event id {text!r}: expected <milliseconds>-<sequence>")
    return int(match[1]), int(match[2])


def format_event_id(key: tuple[int, int]) -> str:
    """`(1700000000000, 3)` -> `"1700000000000-3"`."""
    return f"{key[0]}-{key[1]}"


def encode_data(topic: str, data: Any) -> str:
    """`data` as compact JSON, checked: every backend stores and sends this text.

    :raises EventError: when `data` is not JSON-serialisable (NaN and infinities
        included) or its JSON is larger than `MAX_EVENT_BYTES`.
    """
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(f"data of event {topic!r} is not JSON-serialisable: {exc}") from None
    if len(text) > MAX_EVENT_BYTES // 4 and len(text.encode()) > MAX_EVENT_BYTES:
        raise EventError(
            f"data of event {topic!r} is {len(text.encode())} bytes as JSON; "
            f"the limit is {MAX_EVENT_BYTES}"
        )
    return text


def retiring_signal() -> asyncio.Event:
    """The `asyncio.Event` the runtime sets when the generation serving the current
    request or WebSocket retires (a reload swapped in a new one) or the server stops.

    A long-lived stream of one's own should end when it is set, so that its client
    reconnects to the new generation (the helpers here do). Outside a Courtyard app it is
    an event that is never set.
    """
    if has_app_context():
        signal = current_app.extensions.get(RETIRING)
        if isinstance(signal, asyncio.Event):
            return signal
    return asyncio.Event()


# The stream both helpers render -------------------------------------------------------


@dataclass(frozen=True)
class _Gap:
    last_event_id: str


_OPEN, _IDLE = object(), object()
_RETIRED, _CLOSED, _UNAVAILABLE = "retired", "closed", "unavailable"


async def _next(subscription: Subscription) -> Event | None:
    # Wrapped so that the end of iteration is a value, not an exception through a task.
    try:
        return await anext(subscription)
    except StopAsyncIteration:
        return None


async def _stream(
    bus: EventBus,
    patterns: tuple[str, ...],
    last_event_id: str | None,
    tenant: str | None,
    idle: float | None,
    retiring: asyncio.Event,
) -> AsyncGenerator[object, None]:
    """Yield `_OPEN` once subscribed, then events, `_Gap` notices and `_IDLE` after `idle`
    quiet seconds; then, last, why it ended (_RETIRED, _CLOSED or _UNAVAILABLE).

    A subscription that lags is reopened from its last event: the client sees a gap
    notice only if events were really lost.
    """
    stop = asyncio.ensure_future(retiring.wait())
    pending: asyncio.Future[Event | None] | None = None
    opened = False
    try:
        while True:
            try:
                async with bus.subscribe(
                    *patterns, last_event_id=last_event_id, tenant=tenant
                ) as subscription:
                    if not opened:
                        opened = True
                        yield _OPEN
                    if subscription.gap:
                        yield _Gap(last_event_id or subscription.last_event_id)
                    while True:
                        if pending is None:
                            pending = asyncio.ensure_future(_next(subscription))
                        waiting: set[asyncio.Future[Any]] = {pending, stop}
                        done, _ = await asyncio.wait(
                            waiting, timeout=idle, return_when=asyncio.FIRST_COMPLETED
                        )
                        if pending in done:
                            event, pending = pending.result(), None
                            if event is None:
                                yield _CLOSED
                                return
                            last_event_id = event.id
                            yield event
                        elif stop in done:
                            yield _RETIRED
                            return
                        else:
                            yield _IDLE
            except SubscriptionLagged as lagged:
                pending = None
                last_event_id = lagged.last_event_id
            except EventBusUnavailable:
                yield _UNAVAILABLE
                return
    finally:
        for future in (pending, stop):
            if future is not None and not future.done():
                future.cancel()


def _stream_arguments(
    patterns: tuple[str, ...], last_event_id: str | None, source: Any
) -> str | None:
    """Check what a helper was given before anything is sent: 400 answers instead."""
    try:
        topic_matcher(patterns)
    except EventError as exc:
        raise ApiError(400, "INVALID_TOPIC_PATTERN", str(exc)) from None
    if last_event_id is None:
        last_event_id = source.headers.get("Last-Event-ID") or source.args.get(LAST_EVENT_ID_PARAM)
        last_event_id = last_event_id.strip() if last_event_id else None
    if last_event_id is not None:
        try:
            parse_event_id(last_event_id)
        except EventError as exc:
            raise ApiError(400, "INVALID_EVENT_ID", str(exc)) from None
    return last_event_id


def _frame(event: Event, transform: Callable[[Event], Any] | None) -> Any:
    if transform is not None:
        return transform(event)
    return {"id": event.id, "topic": event.topic, "data": event.data, "time": event.time}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Server-Sent Events ---------------------------------------------------------------------


def sse_response(
    bus: EventBus,
    *patterns: str,
    last_event_id: str | None = None,
    tenant: str | None = None,
    heartbeat: float = 15.0,
    transform: Callable[[Event], Any] | None = None,
    named: bool = True,
) -> Response:
    """A streaming `text/event-stream` response of the events matching `patterns`.

    Each event is sent as `id: <id>`, `event: <topic>` and `data: <JSON>` lines; with
    `named=False` the `event:` line is left out (so that a browser's
    `EventSource.onmessage` sees every event) and `data` is the envelope `{"id", "topic",
    "data", "time"}`. A comment line is sent after `heartbeat` quiet seconds, so that
    proxies keep the connection open, and one as soon as the subscription is open.

    Call it in a request. The stream ends when the client disconnects (the subscription
    is closed with it), when the generation retires or the server stops, and when the
    bus closes; the client then reconnects with `Last-Event-ID` and misses nothing the
    bus still holds. A gap is announced with a `courtyard.gap` event.

    :param last_event_id: resume after this id; by default the request's
        `Last-Event-ID` header, else its `lastEventId` query parameter.
    :param tenant: only the events published for this tenant.
    :param transform: makes the `data` sent from an event; return None to skip it.
    :raises ApiError: 400 `INVALID_TOPIC_PATTERN` or `INVALID_EVENT_ID`.
    """
    last_event_id = _stream_arguments(patterns, last_event_id, request)
    retiring = retiring_signal()

    def render(item: object) -> str | None:
        if isinstance(item, Event):
            if transform is not None:
                data = transform(item)
                if data is None:
                    return None
            else:
                data = item.data if named else _frame(item, None)
            name = f"event: {item.topic}\n" if named else ""
            return f"id: {item.id}\n{name}data: {_json(data)}\n\n"
        if isinstance(item, _Gap):
            notice = {"lastEventId": item.last_event_id}
            if named:
                return f"event: {GAP_TOPIC}\ndata: {_json(notice)}\n\n"
            return f"data: {_json({'topic': GAP_TOPIC, 'data': notice})}\n\n"
        if item is _OPEN:
            return ": open\n\n"
        if item is _IDLE:
            return ": keep-alive\n\n"
        return f": {item}\n\n"  # why the stream ends, for whoever reads it by hand

    async def body() -> AsyncIterator[bytes]:
        stream = _stream(bus, patterns, last_event_id, tenant, heartbeat, retiring)
        async with aclosing(stream) as items:
            async for item in items:
                text = render(item)
                if text is not None:
                    yield text.encode()

    # A HEAD request gets the headers only: no subscription, no endless body.
    content = [b""] if request.method == "HEAD" else body()
    response = Response(content, status=200, content_type="text/event-stream; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    response.timeout = None  # Quart's response timeout would cut the stream
    return response


# WebSockets -----------------------------------------------------------------------------

_CLOSE_CODES = {
    _RETIRED: 1012,  # service restart: reconnect (to the new generation)
    _CLOSED: 1001,  # going away: the bus closed, the server stops
    _UNAVAILABLE: 1013,  # try again later: Redis does not answer
}


async def stream_to_websocket(
    bus: EventBus,
    *patterns: str,
    last_event_id: str | None = None,
    tenant: str | None = None,
    transform: Callable[[Event], Any] | None = None,
) -> None:
    """Send the events matching `patterns` over the current WebSocket, one JSON text
    frame each: `{"id", "topic", "data", "time"}`, or what `transform` makes of the event
    (None skips it). Returns when the connection ends.

    Call it in a Quart `websocket` route; it accepts the connection. A client resumes
    with the query parameter `lastEventId` (the `id` of the last frame it got); a gap is
    announced with the frame `{"topic": "courtyard.gap", "data": {"lastEventId": ...}}`.
    Messages from the client are read and ignored. The server closes the connection
    with code 1012 when the generation retires (reconnect, with `lastEventId`), 1001
    when the bus closes and 1013 when Redis does not answer.

    :param last_event_id: resume after this id; by default the `lastEventId` query
        parameter.
    :raises ApiError: 400 `INVALID_TOPIC_PATTERN` or `INVALID_EVENT_ID`, before the
        connection is accepted (the client sees an HTTP 400).
    """
    last_event_id = _stream_arguments(patterns, last_event_id, websocket)
    retiring = retiring_signal()
    await websocket.accept()
    ignore = asyncio.ensure_future(_ignore_messages())
    stream = _stream(bus, patterns, last_event_id, tenant, None, retiring)
    try:
        async with aclosing(stream) as items:
            async for item in items:
                if isinstance(item, Event):
                    frame = _frame(item, transform)
                    if frame is not None:  # transform returned None: skip
                        await websocket.send(_json(frame))
                elif isinstance(item, _Gap):
                    notice = {"lastEventId": item.last_event_id}
                    await websocket.send(_json({"topic": GAP_TOPIC, "data": notice}))
                elif isinstance(item, str) and item in _CLOSE_CODES:
                    reason = f"event stream {item}; reconnect with lastEventId"
                    await websocket.close(_CLOSE_CODES[item], reason)
    finally:
        ignore.cancel()


async def _ignore_messages() -> None:
    # Read what the client sends: unread messages would pile up in Quart's queue.
    while True:
        await websocket.receive()


__all__ = [
    "GAP_TOPIC",
    "MAX_EVENT_BYTES",
    "MAX_TOPIC_LENGTH",
    "RETIRING",
    "Event",
    "EventBus",
    "EventBusUnavailable",
    "EventError",
    "Subscription",
    "SubscriptionLagged",
    "check_topic",
    "encode_data",
    "format_event_id",
    "parse_event_id",
    "retiring_signal",
    "sse_response",
    "stream_to_websocket",
    "topic_matcher",
]
