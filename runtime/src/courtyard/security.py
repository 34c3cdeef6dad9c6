"""Request-level protections, applied to every request wherever its route lives:
the Host allow-list, the Origin check, request ids.

Order (docs/security.md): a `Host` the server does not answer to is refused first (421
`MISDIRECTED_REQUEST`: a page on a DNS-rebinding domain reaches loopback with its own
name in `Host`); then, for a state-changing request or a WebSocket handshake without a
verified credential header, `check_origin` (403 `CSRF_FAILED`). A console session cookie
is not such a header: browsers attach cookies by themselves, so app.py checks the Origin
of every request a cookie authenticates, with no exemption (`may_omit` false).
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from courtyard_sdk import ApiError
from courtyard_sdk.origin import INTERNAL_HEADERS

from .asgi import Scope, Send, send_error

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WS_SCHEMES = {"ws": "http", "wss": "https"}

Origin = tuple[str, str, int]


# Request ids from a generator of their own: seeding the global `random` (a test, a
# plugin) must not repeat them. Seeded from the system's randomness, again in a forked child.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_request_id() -> str:
    """A fresh correlation id: unique, not secret. Not `os.urandom`, which releases the GIL
    for a system call: under load the request then waits for it behind the process's other
    threads (measured: 15 us a request)."""
    return _IDS.randbytes(16).hex()


def request_id_for(given: str | None) -> str:
    """The request's own `X-Request-Id` when it is sane (short, printable), else a new one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return new_request_id()


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Host ---------------------------------------------------------------------------------


def host_name(host: str | None) -> str | None:
    """The name in a `Host` header (`example.com:8000` -> `example.com`, `[::1]:80` ->
    `::1`), lowercased, without a trailing dot; None when missing or unparsable."""
    if not host or not host.isascii() or not host.isprintable() or len(host) > 255:
        return None
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        return None
    if parts.hostname is None or parts.username is not None or parts.path:
        return None
    return parts.hostname.rstrip(".") or None


class HostAllowList:
    """The `Host` names the server answers to: the loopback names, the bound address and
    `allowed_hosts` (`.example.com` also allows its subdomains, `*` allows any).
    A loopback server also answers to every `*.localhost` name, as browsers resolve
    them to loopback themselves (never through DNS, so no rebinding)."""

    def __init__(self, bound: str, allowed: Iterable[str] = ()) -> None:
        names = {n.lower().strip("[]").rstrip(".") for n in (*LOOPBACK_NAMES, bound, *allowed)}
        self.any = "*" in names
        self.suffixes = tuple(n for n in names if n.startswith("."))
        self.names = frozenset(n for n in names if not n.startswith(".")) | {
            s[1:] for s in self.suffixes
        }
        self._allowed: set[str] = set()

    def allows(self, host: str | None) -> bool:
        """Whether a request with this `Host` header may be served."""
        if host in self._allowed:  # every request asks: remember the few good answers
            return True
        name = host_name(host)
        if name is None:
            return False
        allowed = (
            self.any
            or name in self.names
            or name.endswith(".localhost")
            or name.endswith(self.suffixes)
        )
        if allowed and host is not None and len(self._allowed) < 64:  # a name, once parsed
            self._allowed.add(host)
        return allowed


def misdirected(host: str | None) -> ApiError:
    """The refusal of a `Host` the server does not answer to."""
    shown = "missing" if not host else repr(host[:100])
    return ApiError(
        421,
        "MISDIRECTED_REQUEST",
        f"Host {shown} is not served here (add it to allowed_hosts to serve it)",
    )


# Origin -------------------------------------------------------------------------------


def origin_of(url: str) -> Origin | None:
    """`(scheme, host, port)` of an origin or URL; None when unparsable or opaque."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    scheme = _WS_SCHEMES.get(scheme, scheme)
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS.get(scheme, 0)


def check_origin(scheme: str, host: str, headers: Any, *, may_omit: bool = False) -> None:
    """Refuse a state-changing request or a WebSocket handshake, without a verified
    credential, that a browser on another site could have sent.

    A present `Origin` must be the server's own (`null` and unparsable ones never are).
    A request without `Origin` came from a program, not a browser (browsers send it with
    every POST, PUT, PATCH, DELETE and WebSocket handshake): it passes when it says
    `X-Courtyard-Internal: true` (or Buntime's `X-Buntime-Internal: true`) or when
    `may_omit` (its route accepts programs as they are).

    :raises ApiError: 403 `CSRF_FAILED`.
    """
    origin = headers.get("Origin") or None  # an empty header claims no origin
    if origin is not None:
        own = origin_of(f"{scheme}://{host}")
        if own is None or origin_of(origin) != own:
            raise ApiError(403, "CSRF_FAILED", f"Origin {origin[:200]} does not match this server")
        return
    if may_omit or any(headers.get(h, "").lower() == "true" for h in INTERNAL_HEADERS):
        return
    raise ApiError(403, "CSRF_FAILED", "Origin header required for state-changing requests")


# Answering below Quart ----------------------------------------------------------------


async def refuse(
    scope: Scope,
    send: Send,
    error: ApiError,
    request_id: str,
    extra_headers: Mapping[str, str] | None = None,
) -> None:
    """Answer `error` (with its headers) to an HTTP request or a WebSocket handshake that
    never reaches an app (a WebSocket gets an HTTP denial where the server supports one,
    else a close)."""
    named = {**error.headers, **(extra_headers or {}), "X-Request-Id": request_id}
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in named.items()]
    if scope["type"] == "http":
        await send_error(send, error.status, error.code, error.message, headers)
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_error(_as_denial(send), error.status, error.code, error.message, headers)


def _as_denial(send: Send) -> Send:
    async def denial(message: dict[str, Any]) -> None:
        await send({**message, "type": message["type"].replace("http.", "websocket.http.", 1)})

    return denial
