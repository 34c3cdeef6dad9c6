"""Counting the requests in flight, for a server that does not wait for them itself.

App workers load this file by its path too (apps/worker_main.py), beside the app and
without the runtime: it imports nothing of the runtime when it runs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..asgi import ASGIApp, Receive, Scope, Send


class InFlight:
    """An ASGI wrapper counting the HTTP requests and WebSockets being served, so that a
    shutdown can wait for them (`drained`). Lifespan messages pass through uncounted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        self.active += 1
        self._idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for nothing to be in flight; whether it came to that."""
        if self.active == 0:  # also with a timeout of 0, which `wait_for` would not wait out
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
