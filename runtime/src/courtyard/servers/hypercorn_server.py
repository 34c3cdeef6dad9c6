"""Serving on Hypercorn (setting `server = "hypercorn"`, the default)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from courtyard_sdk import StartupError
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from .binding import bind_address, shared_socket

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

    from ..asgi import ASGIApp
    from ..settings import Settings


def hypercorn_config(settings: Settings) -> Config:
    """The Hypercorn settings Courtyard serves with."""
    config = Config()
    config.bind = [bind_address(settings.host, settings.port)]
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    config.graceful_timeout = settings.drain_timeout
    # Hypercorn's own `read_timeout` is left unset on purpose: it counts any silence of the
    # client, also once its request is complete, and so would end every event stream and
    # WebSocket whose client listens quietly for that long. `read_timeout` is applied to
    # request bodies instead (limits.py); a request head must arrive within
    # `keep_alive_timeout` (5 s) of the connection opening, which Hypercorn enforces.
    return config


async def serve(
    app: ASGIApp, settings: Settings, stop: asyncio.Event, *, shared: bool = False
) -> None:
    """Serve `app` until `stop` is set: Hypercorn then stops accepting, waits up to
    `drain_timeout` for requests in flight, and runs the lifespan shutdown.

    :param shared: one of several server processes on the address: the socket is bound
        here with SO_REUSEPORT, which Hypercorn does not set, and handed to it.
    :raises StartupError: Hypercorn cannot bind the address.
    """
    # An ASGI 3 app: its `dict[str, Any]` scopes and messages take Hypercorn's TypedDicts.
    framework = cast("ASGIFramework", app)
    config = hypercorn_config(settings)
    try:
        if shared:
            # Hypercorn takes the descriptor over (and closes it when it stops).
            config.bind = [f"fd://{shared_socket(settings.host, settings.port).detach()}"]
        await hypercorn_serve(framework, config, shutdown_trigger=stop.wait)
    except OSError as exc:  # binding: the address is taken or not this machine's
        raise StartupError(f"hypercorn cannot serve: {exc}") from exc
