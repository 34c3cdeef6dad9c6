"""The id of the request being served: the `X-Request-Id` the runtime answers with (the
client's own when it sent a well-formed one), for plugins whose answers or records carry
it (an API envelope's `requestId`, say)."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("courtyard_request_id", default="-")
"""Set by the runtime for each request and WebSocket; "-" outside one (log lines show
it so)."""


def current_request_id() -> str | None:
    """The id of the request (or WebSocket) being served; None outside one."""
    value = REQUEST_ID.get()
    return None if value == "-" else value


__all__ = ["REQUEST_ID", "current_request_id"]
