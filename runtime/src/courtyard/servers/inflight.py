"""Counting the requests in flight, for a server that does not wait for them itself.

App workers load this file by its path too (apps/worker_main.py), beside the app and
without the runtime: it imports nothing of the runtime when it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..asgi import ASGIApp, Receive, Scope, Send


class InFlight:
    """An ASGI wrapper counting the HTTP requests and WebSockets being served, so that a
    shutdown can wait for them (`drained`). Lifespan messages pass through uncounted.

    :param websocket_send: makes the `send` each WebSocket connection gets, for what the
        server needs of its messages (denials.py): one wrapper around the app, not two.
    """

    def __init__(self, app: ASGIApp, websocket_send: Callable[[Send], Send] | None = None) -> None:
        self.app = app
        self.websocket_send = websocket_send
        self.active = 0
        # Made by the first `drained` that has to wait: until then a request costs a count
        # and no event (setting and clearing one for each took 0.3 us of 2.5).
        self._idle: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
                return
            if self.websocket_send is not None:
                send = self.websocket_send(send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active == 0 and self._idle is not None:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for nothing to be in flight; whether it came to that."""
        if self.active == 0:  # also with a timeout of 0, which `wait_for` would not wait out
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()  # set when the count last came to 0, before these requests
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
