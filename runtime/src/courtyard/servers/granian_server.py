"""Serving on granian (setting `server = "granian"`): its Rust HTTP server, embedded in
this process's event loop, so that the application the runtime built is served as it is.

Granian's embedded server (`granian.server.embed.Server`) accepts connections and parses
HTTP on its own threads and runs every request as an asyncio task on this loop. It
serves HTTP/1.1 alone (HEADER_READ_TIMEOUT_MS says why), and a WebSocket denial's body is
joined into one message, the only form granian takes (denials.py). Two things are done
here rather than by granian, so that a stop behaves as on Hypercorn:

- the lifespan (lifespan.py): granian would run the lifespan shutdown as soon as it
  stops accepting, while requests are still in flight;
- the drain: granian stops accepting and lets its connections finish, but does not say
  when they have; requests in flight are counted (inflight.py) and waited for, up to
  `drain_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from courtyard_sdk import StartupError
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from .denials import whole_denials
from .inflight import InFlight
from .lifespan import Lifespan

if TYPE_CHECKING:
    from ..asgi import ASGIApp
    from ..settings import Settings

log = logging.getLogger("courtyard.server")

# A request head must arrive within this long (ms) of the connection opening or of the
# previous answer, as with Hypercorn's 5 s keep-alive timeout; granian's default is 30 s.
# It holds from the connection's opening only with HTTP/1 alone: in granian's "auto" mode
# a connection first waits, without any limit, for the bytes that tell HTTP/1 from
# HTTP/2, so a client that connects and sends nothing would hold its connection forever.
# Browsers speak HTTP/2 over TLS only, which the runtime does not serve.
HEADER_READ_TIMEOUT_MS = 5_000
# Connections open at once (granian's `backpressure` counts every connection, idle
# keep-alive ones too; more clients wait to be accepted). Granian's default, its backlog
# (128), would let 128 open event streams or WebSockets lock everyone else out;
# Hypercorn has no such limit.
MAX_CONNECTIONS = 10_000


class EmbedNotice(logging.Filter):
    """Drops the warning granian logs at every start of its embedded server, which the
    runtime runs by choice (docs/performance.md#servers-and-event-loops says why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but that warning."""
        return record.getMessage() != "Embedded server is experimental!"


# Granian's loggers ('_granian', 'granian.access') go to the runtime's handlers, in its
# format, rather than to granian's own handlers on stdout.
_LOGGING: dict[str, Any] = {
    "filters": {"embed_notice": {"()": EmbedNotice}},
    "loggers": {
        "_granian": {"handlers": [], "propagate": True, "filters": ["embed_notice"]},
        "granian.access": {"handlers": [], "propagate": True, "level": "WARNING"},
    },
}
# Granian logs a level above the runtime's: its start and stop lines (listening, workers
# spawned) say again what the runtime's own `serving on` line says.
_LEVELS = {"debug": LogLevels.debug, "info": LogLevels.warning, "warning": LogLevels.warning}


def granian_server(app: ASGIApp, settings: Settings) -> Server:
    """Granian's embedded server for `app` on the configured address, without lifespan."""
    return Server(
        app,
        address=settings.host.strip("[]"),
        port=settings.port,
        interface=Interfaces.ASGINL,  # no lifespan: Lifespan runs it (module docstring)
        http=HTTPModes.http1,  # see HEADER_READ_TIMEOUT_MS
        websockets=True,
        backpressure=MAX_CONNECTIONS,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        log_dictconfig=_LOGGING,
        log_level=_LEVELS.get(settings.log_level, LogLevels.error),
        log_access=False,
    )


async def serve(app: ASGIApp, settings: Settings, stop: asyncio.Event) -> None:
    """Serve `app` until `stop` is set, then stop accepting, wait up to `drain_timeout`
    for requests in flight, and run the lifespan shutdown.

    :raises StartupError: granian could not bind, or stopped by itself.
    """
    inflight = InFlight(app, websocket_send=whole_denials)
    lifespan = Lifespan(app)
    server = granian_server(inflight, settings)
    await lifespan.startup()
    try:
        await _run_until(server, stop)
    finally:
        if not await inflight.drained(settings.drain_timeout):
            log.warning(
                "%d request(s) still in flight after %g s; stopping anyway",
                inflight.active,
                settings.drain_timeout,
            )
        await lifespan.shutdown()


async def _run_until(server: Server, stop: asyncio.Event) -> None:
    """Run granian until `stop` is set; then it stops accepting and returns."""
    running = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not running.done():
        server.stop()  # type: ignore[no-untyped-call]  # granian leaves it unannotated
    stopping.cancel()
    try:
        await running
    except Exception as exc:
        raise StartupError(f"granian cannot serve: {exc}") from exc
    if server.interrupt_children:
        raise StartupError("granian's worker stopped unexpectedly")
