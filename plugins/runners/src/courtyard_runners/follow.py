"""`GET /api/runners/{id}/logs?follow=true`: a runner's log as Server-Sent Events.

Each entry is one event whose `id` is the line's sequence number in the database, so a
client that reconnects with `Last-Event-ID` (what `EventSource` sends by itself) gets
every line after it, from the database: nothing is lost, however many lines went by,
and nothing comes twice. New lines are announced in process and, from other instances,
on the event bus (`Service.listen`); the stream also looks every second. It ends when the
generation retires or the server stops (the SDK's `retiring_signal`), and the client
reconnects with its last id, as with the SDK's `sse_response`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence

from courtyard_sdk import Response
from courtyard_sdk.events import retiring_signal
from quart import request

from . import errors, views
from .service import Service

BATCH = 500
HEARTBEAT_SECONDS = 15.0


def _last_event_id() -> int | None:
    text = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    if not text:
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 18:
        raise errors.RunnerError(
            400, "INVALID_EVENT_ID", "Last-Event-ID must be the id of a log event"
        )
    return int(text)


async def follow_logs(
    service: Service,
    runner_id: str,
    since: float | None,
    until: float | None,
    levels: Sequence[str] | None,
    job_id: str | None,
    limit: int,
) -> Response:
    """The streaming response: after `Last-Event-ID` when given; else the lines since
    `since`, or the newest `limit` lines; then every new line."""
    after = _last_event_id()
    retiring = retiring_signal()
    if after is None and since is None:
        # The head first: a line written while the backlog is read has a higher seq.
        head = await service.last_log_seq(runner_id)
        backlog, _ = await service.logs(runner_id, None, until, levels, job_id, limit)
        after = (backlog[0]["seq"] - 1) if backlog else head

    async def body() -> AsyncIterator[bytes]:
        cursor = after
        yield b": open\n\n"
        quiet_since = time.monotonic()
        with service.notifier.listen_logs(runner_id) as event:
            while True:
                event.clear()
                rows, _ = await service.logs(
                    runner_id, since, until, levels, job_id, BATCH, after=cursor or 0
                )
                if rows:
                    chunk = "".join(
                        f"id: {row['seq']}\ndata: "
                        f"{json.dumps(views.log(row), separators=(',', ':'))}\n\n"
                        for row in rows
                    )
                    cursor = rows[-1]["seq"]
                    quiet_since = time.monotonic()
                    yield chunk.encode()
                    if len(rows) == BATCH:
                        continue
                if until is not None and time.time() > until:
                    yield b": until reached\n\n"
                    return
                if retiring.is_set() or service.notifier.closed:
                    yield b": retired; reconnect with Last-Event-ID\n\n"
                    return
                if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                waiter = asyncio.ensure_future(event.wait())
                stopper = asyncio.ensure_future(retiring.wait())
                try:
                    await asyncio.wait(
                        {waiter, stopper}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                    stopper.cancel()

    content = [b""] if request.method == "HEAD" else body()
    response = Response(content, status=200, content_type="text/event-stream; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
