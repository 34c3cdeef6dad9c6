"""Request limits held while a body streams in (docs/security.md#request-limits).

`RequestLimits` wraps the ASGI application the HTTP server serves (server.py), so that every
HTTP request passes through it: core routes, plugin routes and apps alike. It counts a
request's body as it arrives, in a wrapper around `receive`, and answers in the runtime's
error envelope as soon as a limit is passed, without waiting for the rest:

- GET and HEAD carry no body: `400 BODY_NOT_ALLOWED` (a body there is a smuggling or
  cache-poisoning attempt more often than a mistake);
- each body has a limit: `upload_max_bytes` for the archive uploads (`413
  ARCHIVE_TOO_LARGE`), `REQUEST_MAX_BYTES` for the other core and plugin routes (`413
  PAYLOAD_TOO_LARGE`); requests served by an app are left to the app's own
  `max_body_size` (apps/proxy.py);
- all bodies in flight together stay within `bodies_max_total_bytes`: a request declaring
  a `Content-Length` reserves it before anything is read, a streamed one takes its bytes
  as they come; past the budget, `503 SERVER_BUSY` with `Retry-After`, since the request
  would be accepted a moment later;
- a client that sends nothing for `read_timeout` seconds while its body is incomplete is
  answered `408 REQUEST_TIMEOUT` and its connection closed.

A refusal that comes while the application runs is sent by the wrapper itself (unless the
application has started its own answer), and the application then sees the client
disconnect; whatever it sends afterwards is dropped. The server closes the connection once
the answer is out, since the rest of the body was never read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from courtyard_sdk import ApiError

from .asgi import Receive, Scope, Send, header
from .security import refuse, request_id_for

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("courtyard.limits")

UPLOAD_PATHS = ("/api/plugins/upload", "/api/apps/upload")  # archives: upload_max_bytes
REQUEST_MAX_BYTES = 16 * 1024**2  # Quart's MAX_CONTENT_LENGTH, which core and plugin routes keep
RETRY_AFTER = 2  # seconds a client refused for want of budget is told to wait
REFUSED = "courtyard.refused"  # scope key: the status the limits answered with (audit.py)
NO_BODY_METHODS = ("GET", "HEAD")
_DISCONNECT = {"type": "http.disconnect"}


class BodyBudget:
    """Bytes of request bodies in flight, across every request, and their ceiling."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve `size` more bytes; False (and nothing reserved) past the ceiling."""
        if self.used + size > self.total:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        """Release `size` bytes reserved before."""
        self.used -= size


class RequestLimits:
    """The ASGI wrapper applying the limits to every HTTP request (module docstring).

    :param app: the application served (the Host).
    :param for_app: tells requests an app serves, whose bodies only the budget bounds
        here; asked only of bodies past `REQUEST_MAX_BYTES`.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Any],
        settings: Settings,
        for_app: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app = app
        self.upload_max_bytes = settings.upload_max_bytes
        self.read_timeout = settings.read_timeout
        self.budget = BodyBudget(settings.bodies_max_total_bytes)
        self.for_app = for_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: HTTP requests are guarded, the rest passes through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _body_headers(scope)
        if not length and not chunked and scope.get("http_version") != "2":
            # HTTP/1 without Content-Length or Transfer-Encoding has no body (HTTP/2 may
            # stream one without either): nothing to count, so no wrapper to pay for.
            await self.app(scope, receive, send)
            return
        guard = _Guard(self, scope, receive, send)
        refusal = guard.check_head(length, chunked)
        if refusal is not None:
            await guard.refuse(refusal)
            return
        try:
            await self.app(scope, guard.receive, guard.send)
        finally:
            self.budget.give_back(guard.held)

    def busy(self) -> ApiError:
        """The refusal of a body the budget cannot hold now."""
        return ApiError(
            503,
            "SERVER_BUSY",
            "too many request bodies are being received; try again shortly",
            {"Retry-After": str(RETRY_AFTER)},
        )


class _Guard:
    """One request's body, counted as it arrives."""

    def __init__(self, limits: RequestLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits = limits
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received = 0  # body bytes so far
        self.held = 0  # bytes reserved in the budget
        self.complete = False  # the whole body arrived
        self.refused = False
        self.started = False  # the application started its answer
        self.answered = False  # the guard answered: drop what the application sends
        self._for_app: bool | None = None  # asked once, of a large body only

    def too_large(self, size: int) -> ApiError | None:
        """The refusal of a body of `size` bytes (so far), if it is one."""
        scope, limits = self.scope, self.limits
        method = scope["method"]
        if method in NO_BODY_METHODS:
            return ApiError(400, "BODY_NOT_ALLOWED", f"a {method} request carries no body")
        if method == "POST" and scope["path"] in UPLOAD_PATHS:
            if size > limits.upload_max_bytes:
                limit = limits.upload_max_bytes
                return ApiError(413, "ARCHIVE_TOO_LARGE", f"the upload exceeds {limit} bytes")
            return None
        if size <= REQUEST_MAX_BYTES:
            return None
        if self._for_app is None:
            self._for_app = limits.for_app(scope)
        if self._for_app:
            return None
        message = f"the request body exceeds {REQUEST_MAX_BYTES} bytes"
        return ApiError(413, "PAYLOAD_TOO_LARGE", message)

    def check_head(self, length: int | None, chunked: bool) -> ApiError | None:
        """Refuse what the request's head already tells (its declared `length` and
        whether it is `chunked`): a body where none belongs, a declared length over the
        limit or beyond the budget."""
        scope, limits = self.scope, self.limits
        if scope["method"] in NO_BODY_METHODS:
            if length or chunked:
                return self.too_large(0)
            return None
        if length:
            if (refusal := self.too_large(length)) is not None:
                return refusal
            if not limits.budget.take(length):
                return limits.busy()
            self.held = length
        return None

    async def receive(self) -> dict[str, Any]:
        """The next message, counted; a refusal ends the request for the application."""
        if self.refused:
            return _DISCONNECT
        if self.complete:  # only the disconnect is left to wait for: no timeout
            return await self._receive()
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                message = await self._receive()
        except TimeoutError:
            timeout = self.limits.read_timeout
            await self.refuse(
                ApiError(408, "REQUEST_TIMEOUT", f"no request data received for {timeout:g} s")
            )
            return _DISCONNECT
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        if size:
            self.received += size
            refusal = self.too_large(self.received)
            if refusal is None and self.received > self.held:
                if self.limits.budget.take(self.received - self.held):
                    self.held = self.received
                else:
                    refusal = self.limits.busy()
            if refusal is not None:
                await self.refuse(refusal)
                return _DISCONNECT
        if not message.get("more_body", False):
            self.complete = True
        return message

    async def send(self, message: dict[str, Any]) -> None:
        """Pass the application's answer on, unless the guard answered instead."""
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def refuse(self, refusal: ApiError) -> None:
        """Answer `refusal` (unless the application already answers) and stop the body."""
        self.refused = True
        self.scope[REFUSED] = refusal.status
        level = logging.WARNING if refusal.status == 503 else logging.INFO
        log.log(
            level,
            "%s %s refused: %d %s",
            self.scope["method"],
            self.scope["path"],
            refusal.status,
            refusal.code,
        )
        if self.started:
            return
        self.answered = True
        rid = request_id_for(header(self.scope, b"x-request-id"))
        # The rest of the body is not read: the connection cannot carry another request.
        await refuse(self.scope, self._send, refusal, rid, {"Connection": "close"})


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The declared body length (None when absent or unreadable: the server refuses a
    malformed one itself) and whether `Transfer-Encoding` is present, in one pass."""
    length, chunked = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked
