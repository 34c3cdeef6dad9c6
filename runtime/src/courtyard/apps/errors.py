"""What the worker pool answers in an app's place, and the breaks that lead to it.

A `Refusal` is an answer the pool gives instead of the app's (its status, code and
message); `send_error` sends it in the error envelope `{"error": {"code", "message"}}`,
for a WebSocket as a denial response or a close. The other exceptions say why an exchange
with a worker broke off. Pure definitions: nothing here keeps state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..asgi import Scope, Send
from .config import AppSettings

# What a client learns of a start failure: never the worker's output (it may hold secrets).
START_FAILED = "The app could not start; the server's log says why"


class Refusal(Exception):
    """An answer the pool gives instead of the app's."""

    def __init__(
        self, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)


class WorkerGone(Exception):
    """The connection to the worker broke (it crashed, or closed it mid-exchange)."""


class ClientGone(Exception):
    """The caller's client disconnected."""


class TooLarge(Exception):
    """The request body passed `max_body_size`."""


def too_large(settings: AppSettings) -> Refusal:
    """The refusal of a body above the app's `max_body_size`."""
    return Refusal(
        413,
        "PAYLOAD_TOO_LARGE",
        f"The request body is larger than {settings.max_body_size} bytes",
    )


async def send_error(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Answer with the error envelope (for a WebSocket: as a denial response, or a close)."""
    body = json.dumps({"error": {"code": refusal.code, "message": refusal.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *refusal.headers,
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" in (scope.get("extensions") or {}):
            start = {"type": "websocket.http.response.start", "status": refusal.status}
            await send({**start, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013 if refusal.status == 503 else 1011})
        return
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
