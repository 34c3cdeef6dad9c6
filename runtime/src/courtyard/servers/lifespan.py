"""Running an ASGI application's lifespan ourselves, for a server that is told not to:
granian starts its lifespan shutdown as soon as it stops accepting, before requests in
flight are done, and the runtime's shutdown (the plugins' `courtyard_shutdown` hooks)
must come after them."""

from __future__ import annotations

import asyncio
from typing import Any

from courtyard_sdk import StartupError

from ..asgi import ASGIApp


class Lifespan:
    """The lifespan of one application: `startup()`, later `shutdown()`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        """Send `lifespan.startup` and wait for the answer.

        :raises StartupError: the application failed its start-up.
        """
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer["type"] != "lifespan.startup.complete":
            raise StartupError(f"lifespan start-up failed: {answer.get('message', '')}")

    async def shutdown(self) -> None:
        """Send `lifespan.shutdown` and wait for the answer (nothing to do when the
        lifespan never started or already ended).

        :raises StartupError: the application failed its shutdown (`courtyard serve`
            then exits with status 1 and the message, as for a failed start).
        """
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        answer = await self._answer()
        await self._task
        if answer["type"] != "lifespan.shutdown.complete":
            raise StartupError(f"lifespan shutdown failed: {answer.get('message', '')}")

    async def _answer(self) -> dict[str, Any]:
        """The application's next message, or its exception if it ends without one."""
        assert self._task is not None
        reply: asyncio.Future[Any] = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            answer: dict[str, Any] = reply.result()
            return answer
        reply.cancel()
        self._task.result()  # raises what the application raised
        raise StartupError("the application ended its lifespan without answering")
