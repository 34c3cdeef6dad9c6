"""The HTTP servers `courtyard serve` can run on (setting `server`: granian, the default,
or Hypercorn) and the event loops (setting `loop`: uvloop, the default, or asyncio); see
docs/configuration.md#server-loop.

Each server module offers `serve(app, settings, stop)`: bind `settings.host` and
`settings.port`, run the ASGI lifespan of `app`, serve until `stop` is set, then stop
accepting, give requests in flight `settings.drain_timeout` seconds, and run the lifespan
shutdown last.

`courtyard serve --workers N` runs N such server processes on one address
(supervisor.py starts and watches them, supervised.py is each one's start), sharing it
with SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .binding import bind_address
from .loops import run

if TYPE_CHECKING:
    from ..asgi import ASGIApp
    from ..settings import Settings

__all__ = ["bind_address", "run", "serve_on"]


async def serve_on(
    settings: Settings, app: ASGIApp, stop: asyncio.Event, *, shared: bool = False
) -> None:
    """Serve `app` on the server `settings.server` names until `stop` is set.

    :param shared: one of several server processes on the address (supervisor.py): bind
        with SO_REUSEPORT (granian always does on Linux).
    :raises StartupError: the server cannot serve (it could not bind, or stopped by
        itself).
    """
    # Imported here: each pulls in its server, and only one serves.
    if settings.server == "granian":
        from .granian_server import serve as serve_granian

        await serve_granian(app, settings, stop)
    else:
        from .hypercorn_server import serve as serve_hypercorn

        await serve_hypercorn(app, settings, stop, shared=shared)
