"""The Quart app class of a generation (app.py assembles it): Quart's, with less
per-request machinery where the runtime measured it (docs/performance.md, "Route overhead").
Everything Quart guarantees a handler holds: the same request and app contexts, before
and after request functions, error handlers, streamed bodies and response timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import Any, cast

from quart import Quart, Request, Response
from quart.asgi import ASGIHTTPConnection, _handle_exception
from quart.ctx import RequestContext
from quart.globals import _cv_request, request_ctx
from quart.routing import QuartRule
from quart.sessions import SecureCookieSessionInterface, SessionMixin
from quart.signals import request_tearing_down
from quart.typing import ResponseReturnValue, ResponseTypes
from quart.utils import encode_headers
from quart.wrappers.response import DataBody
from werkzeug.routing import MapAdapter


class OneTaskConnection(ASGIHTTPConnection):
    """Quart's HTTP connection in one task rather than three.

    Quart runs the handler and the receiver in two tasks, waits for the first to end, and
    sends the response in a third (`asyncio.wait_for`). Here the handler runs in the
    server's task; a receiver task feeds the body and cancels the handler when the client
    goes away, as Quart's does; the response's timeout is a timer of the event loop. A
    body held in memory goes out in one message with the end of the response.

    The receiver starts once the handler first waits: a request answered without waiting
    (most are, their body already in the server's queue) needs none. Only this call's
    frame holds it: a receiver kept on the connection object made a reference cycle that
    kept the server's `receive` alive after the answer, and requests then hung now and
    then on granian (docs/performance.md, "The receiver starts once the handler waits").
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        """Serve the request in this task; a client that leaves cancels it."""
        request = self._create_request_from_scope(send)
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        receiver: asyncio.Task[None] | None = None

        def start_receiver() -> None:
            nonlocal receiver
            receiver = loop.create_task(self._receive(request, receive, task))

        starting = loop.call_soon(start_receiver)  # runs only if the handler waits
        try:
            await self.handle_request(request, send)
        except asyncio.CancelledError:
            if receiver is None or not receiver.done() or receiver.cancelled():
                raise  # cancelled by the server, not by the client leaving
            task.uncancel()
            receiver.result()  # the receiver's own error, if it failed
        finally:
            starting.cancel()
            if receiver is not None:
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
        if timeout is None:
            await self._send_response(send, response)
            return
        # asyncio.timeout's behaviour with a bare timer: a third of the cost, per request.
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = task.get_loop().call_later(timeout, expire)
        try:
            await self._send_response(send, response)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > cancelling:
                raise  # not (only) the timeout's cancellation
            # Out of time: the response is cut off, as Quart's wait_for leaves it.
        finally:
            timer.cancel()

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


class RoutedRequestContext(RequestContext):
    """Quart's request context, routed through the app's cache of matched routes, with
    its URL adapter bound only when something asks for it (`url_for`, a route the cache
    does not hold): binding costs more than the rest of routing."""

    app: GenerationApp

    def __init__(self, app: GenerationApp, request: Request) -> None:
        # Not Quart's __init__, which binds the adapter; the same attributes otherwise.
        self.app = app
        self.request_websocket = request
        request.routing_exception = None
        request.json_module = app.json
        self.session = None
        self.preserved = False
        self._cv_tokens = []
        self.flashes = None
        self._after_request_functions = []

    @cached_property
    def url_adapter(self) -> MapAdapter | None:  # type: ignore[override]  # bound lazily
        """The adapter bound to this request, as Quart's context holds it."""
        return self.app.create_url_adapter(self.request_websocket)

    async def push(self) -> None:
        """Quart's, without asking for the adapter first (which would bind it)."""
        await self._push_appctx(_cv_request.set(self))
        if self.session is None:
            self.session = await self.app.session_for(self.request)
        self.match_request()

    def match_request(self) -> None:
        """Quart's matching, answered from the app's cache when the route was matched
        before."""
        request = self.request
        key = (request.method, request.path)
        found = self.app.matched.get(key)
        if found is not None:
            request.url_rule, view_args = found
            request.view_args = dict(view_args)  # a handler's preprocessor may change it
            return
        super().match_request()
        if request.routing_exception is None and request.url_rule is not None:
            self.app.remember_match(key, request.url_rule, request.view_args or {})


class GenerationApp(Quart):
    """The generation's Quart app: one task per request (`OneTaskConnection`), routes
    matched once per path (`RoutedRequestContext`), and the async form of each function
    Quart calls worked out once rather than on every call (Quart asks about five times
    per request, a microsecond or two each)."""

    asgi_http_class = OneTaskConnection
    _ASYNC_FORMS_MAX = 512  # a function made afresh per request must not grow it forever
    MATCHED_MAX = 1024  # routes with path parameters make a key per value

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_forms: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}
        # (method, path) -> the rule and arguments werkzeug matched. Without host matching
        # (the runtime has none) a match depends on nothing else; refusals (404, 405,
        # redirects) are not kept.
        self.matched: dict[tuple[str, str], tuple[QuartRule, dict[str, Any]]] = {}
        self._null_session = SecureCookieSessionInterface.null_session_class()

    async def session_for(self, request: Request) -> SessionMixin:
        """Quart's session for `request`. Without a secret key Quart's own interface
        opens none: every request then shares one null session (which refuses changes)
        instead of making its own."""
        interface = self.session_interface
        if not self.secret_key and type(interface) is SecureCookieSessionInterface:
            return self._null_session
        # Through ensure_async, as Quart calls it: an interface's may be synchronous.
        opened = cast(
            SessionMixin | None, await self.ensure_async(interface.open_session)(self, request)
        )
        if opened is None:  # not `or`: a new session is empty, and so falsy
            return await interface.make_null_session(self)
        return opened

    def request_context(self, request: Request) -> RequestContext:
        """A `RoutedRequestContext`."""
        return RoutedRequestContext(self, request)

    def remember_match(
        self, key: tuple[str, str], rule: QuartRule, view_args: dict[str, Any]
    ) -> None:
        """Keep a route werkzeug matched, for the next request to the same path."""
        if len(self.matched) >= self.MATCHED_MAX:
            self.matched.clear()
        self.matched[key] = (rule, dict(view_args))

    def ensure_async(self, func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        """Quart's `ensure_async`, remembered per function."""
        found = self._async_forms.get(func)
        if found is None:
            if len(self._async_forms) >= self._ASYNC_FORMS_MAX:
                self._async_forms.clear()
            found = self._async_forms[func] = super().ensure_async(func)
        return found

    # Quart's request steps, without the work it does for what nobody registered: a signal
    # with no receiver is not sent, a blueprint with no functions is not looked up (Quart's
    # registries are defaultdicts: every lookup of a missing name inserts it).

    async def preprocess_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue | None:
        """Quart's: URL value preprocessors, then before-request functions, outermost
        first; the first answer that is not None ends the request."""
        request = (request_context or request_ctx).request
        names = (None, *reversed(request.blueprints))
        if self.url_value_preprocessors:
            for name in names:
                for processor in self.url_value_preprocessors.get(name, ()):
                    processor(request.endpoint, request.view_args)
        for name in names:
            for function in self.before_request_funcs.get(name, ()):
                result = await self.ensure_async(function)()
                if result is not None:
                    return cast(ResponseReturnValue, result)
        return None

    async def process_response(
        self, response: ResponseTypes, request_context: RequestContext | None = None
    ) -> ResponseTypes:
        """Quart's: `after_this_request` functions, then after-request functions,
        innermost first; the session saved unless it is the null one."""
        context = request_context or request_ctx
        for function in context._after_request_functions:
            response = await self.ensure_async(function)(response)
        for name in (*context.request.blueprints, None):
            for function in reversed(self.after_request_funcs.get(name, ())):
                response = await self.ensure_async(function)(response)
        if not self.session_interface.is_null_session(context.session):
            await self.ensure_async(self.session_interface.save_session)(
                self, context.session, response
            )
        return response

    async def do_teardown_request(
        self, exc: BaseException | None, request_context: RequestContext | None = None
    ) -> None:
        """Quart's: teardown functions, innermost first."""
        request = (request_context or request_ctx).request
        for name in (*request.blueprints, None):
            for function in reversed(self.teardown_request_funcs.get(name, ())):
                await self.ensure_async(function)(exc)
        if request_tearing_down.receivers:
            await request_tearing_down.send_async(
                self,
                _sync_wrapper=self.ensure_async,  # type: ignore[arg-type]  # as in Quart
                exc=exc,
            )
