"""WebSocket denials in one piece, for granian.

A WebSocket handshake refused before it is accepted gets an HTTP answer through the ASGI
`websocket.http.response` extension: `websocket.http.response.start`, then the body in
`websocket.http.response.body` messages, the last one without `more_body`. Quart (a
plugin's or a core route's refusal) and the app relay (apps/proxy.py) send the body in
pieces; granian takes only a whole body in one message, and answers a bare 403 to
anything else. `whole_denials` joins the pieces before granian sees them. A denial is an
error envelope or an app's short answer, so holding it whole costs little.
"""

from __future__ import annotations

from typing import Any

from ..asgi import Send

_BODY = "websocket.http.response.body"


def whole_denials(send: Send) -> Send:
    """A WebSocket connection's `send` that holds denial body pieces until the last, and
    sends them together."""
    pieces: list[bytes] = []

    async def joined(message: dict[str, Any]) -> None:
        if message["type"] == _BODY:
            pieces.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            message = {"type": _BODY, "body": b"".join(pieces), "more_body": False}
            pieces.clear()
        await send(message)

    return joined
