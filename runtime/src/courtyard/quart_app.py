"""The Quart app class of a generation (app.py assembles it): Quart's, with less
per-request machinery where the runtime measured it (docs/performance.md, "Route overhead").
Everything Quart guarantees a handler holds: the same request and app contexts, before
and after request functions, error handlers, streamed bodies and response timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from quart import Quart, Request, Response
from quart.asgi import ASGIHTTPConnection, _handle_exception
from quart.utils import encode_headers
from quart.wrappers.response import DataBody


class OneTaskConnection(ASGIHTTPConnection):
    """Quart's HTTP connection in one task rather than three.

    Quart runs the handler and the receiver in two tasks, waits for the first to end, and
    sends the response in a third (`asyncio.wait_for`). Here the handler runs in the
    server's task; a receiver task feeds the body and cancels the handler when the client
    goes away, as Quart's does; the response's timeout is an `asyncio.timeout`. A body
    held in memory goes out in one message with the end of the response.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        """Serve the request in this task; a client that leaves cancels it."""
        request = self._create_request_from_scope(send)
        task = asyncio.current_task()
        assert task is not None
        receiver = asyncio.ensure_future(self._receive(request, receive, task))
        try:
            await self.handle_request(request, send)
        except asyncio.CancelledError:
            if not receiver.done() or receiver.cancelled():
                raise  # cancelled by the server, not by the client leaving
            task.uncancel()
            receiver.result()  # the receiver's own error, if it failed
        finally:
            receiver.cancel()

    async def _receive(self, request: Request, receive: Any, handler: asyncio.Task[Any]) -> None:
        # The client left (or receiving failed): end the handler, as Quart does. Not when
        # this task is cancelled itself, once the handler is done.
        try:
            await self.handle_messages(request, receive)
        except Exception:
            handler.cancel()
            raise
        handler.cancel()

    async def handle_request(self, request: Request, send: Any) -> None:
        """Make the response (errors through Quart's handlers) and send it, within the
        response's timeout."""
        try:
            response = await self.app.handle_request(request)
        except Exception as error:
            response = await _handle_exception(self.app, error)
        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout = cast(float | None, response.timeout)
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass

    async def _send_response(self, send: Any, response: Any) -> None:
        body = getattr(response, "response", None)
        if not isinstance(body, DataBody):
            await super()._send_response(send, response)
            return
        headers = encode_headers(response.headers)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": body.data[body.begin : body.end]})


class GenerationApp(Quart):
    """The generation's Quart app: one task per request (`OneTaskConnection`), and the async
    form of each function Quart calls worked out once rather than on every call (Quart
    asks about five times per request, a microsecond or two each)."""

    asgi_http_class = OneTaskConnection
    _ASYNC_FORMS_MAX = 512  # a function made afresh per request must not grow it forever

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_forms: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}

    def ensure_async(self, func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        """Quart's `ensure_async`, remembered per function."""
        found = self._async_forms.get(func)
        if found is None:
            if len(self._async_forms) >= self._ASYNC_FORMS_MAX:
                self._async_forms.clear()
            found = self._async_forms[func] = super().ensure_async(func)
        return found
