"""Request-level protections: CSRF by Origin, request ids."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from courtyard_sdk import ApiError
from quart import request

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
INTERNAL_HEADERS = ("X-Courtyard-Internal", "X-Buntime-Internal")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def new_request_id() -> str:
    """A fresh correlation id."""
    return os.urandom(16).hex()


def request_id_for(given: str | None) -> str:
    """The request's own `X-Request-Id` when it is sane (short, printable), else a new one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return new_request_id()


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def check_csrf() -> None:
    """Refuse a state-changing /api request whose Origin is not the server's own.

    Internal callers (workers, the CLI on the same host) say so with
    `X-Courtyard-Internal: true` or the seed's `X-Buntime-Internal: true`.
    """
    if request.method not in STATE_CHANGING or not (
        request.path == "/api" or request.path.startswith("/api/")
    ):
        return
    if any(request.headers.get(h, "").lower() == "true" for h in INTERNAL_HEADERS):
        return
    origin = request.headers.get("Origin")
    if not origin:
        raise ApiError(403, "CSRF_FAILED", "Origin header required for state-changing requests")
    if _origin(origin) != _origin(f"{request.scheme}://{request.host}"):
        raise ApiError(403, "CSRF_FAILED", f"Origin {origin} does not match this server")
