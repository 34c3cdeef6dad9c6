"""What crosses between a caller and a worker: the headers and the request target.

Headers added to proxied requests: `X-Forwarded-For` (the caller's client appended),
`X-Forwarded-Proto`, `X-Forwarded-Host`, and two private ones the worker strips (its secret
and the root path). Hop-by-hop headers are not forwarded in either direction, and the
caller's credentials (`Authorization`, `Cookie`, `X-API-Key`, the internal headers) only to
an app whose `forward_credentials` is set. Pure functions: nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from ..asgi import Scope, header

if TYPE_CHECKING:
    from .process import Reachable

TOKEN_HEADER = b"x-courtyard-token"  # keep in step with worker_main.py
ROOT_PATH_HEADER = b"x-courtyard-root-path"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the pool sets itself (or that make no sense on the worker connection).
REPLACED = frozenset(
    {
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        TOKEN_HEADER,
        ROOT_PATH_HEADER,
    }
)
# The caller's credentials for the runtime, and the runtime's internal markers: an app gets
# them only if its `forward_credentials` setting asks (a key or a session cookie in an
# app's hands would let it act as the caller on the runtime's own API).
CREDENTIALS = frozenset(
    {b"authorization", b"cookie", b"x-api-key", b"x-courtyard-internal", b"x-buntime-internal"}
)
WS_HANDSHAKE = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length, if it declares one; ValueError if malformed."""
    values = [v for n, v in scope.get("headers", ()) if n == b"content-length"]
    if not values:
        return None
    lengths = {v.strip() for v in values}
    if len(lengths) != 1 or not next(iter(lengths)).isdigit():
        raise ValueError("bad content-length")
    return int(next(iter(lengths)))


def request_headers(scope: Scope, worker: Reachable) -> list[tuple[bytes, bytes]]:
    """The caller's headers minus hop-by-hop ones (and, unless the app asks for them, its
    credentials), plus forwarding and private headers."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    withheld = frozenset() if worker.app.settings.forward_credentials else CREDENTIALS
    named_in_connection = {
        token.strip().lower().encode("latin-1")
        for name, value in headers
        if name == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    forwarded_for = [value for name, value in headers if name == b"x-forwarded-for"]
    out = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP
        and name not in REPLACED
        and name not in named_in_connection
        and name not in withheld
    ]
    if not any(name == b"host" for name, _ in out):
        server = scope.get("server")
        out.append((b"host", f"{server[0]}:{server[1]}".encode() if server else b"localhost"))
    client = scope.get("client")
    if client and client[0]:
        forwarded_for.append(str(client[0]).encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    scheme = scope.get("scheme", "http")
    out.append((b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"))
    host = header(scope, b"host")
    if host:
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    out.append((TOKEN_HEADER, worker.token))
    out.append((ROOT_PATH_HEADER, quote(scope.get("root_path", "")).encode("ascii")))
    return out


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """A worker's response headers as they go to the client: hop-by-hop ones dropped."""
    return [
        (bytes(name), bytes(value))
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in drop
    ]


def target(scope: Scope) -> str:
    """The request target for the worker: the caller's path (and query) as given.

    `raw_path` is used when it still matches `path` (it keeps escapes such as %2F); a
    caller that rewrote `path` may have left it stale, so otherwise `path` is quoted.
    """
    path: str = scope.get("path") or "/"
    raw: bytes | None = scope.get("raw_path")
    if raw and raw.isascii() and unquote(raw.decode("ascii")) == path:
        target = raw.decode("ascii")
    else:
        target = quote(path, safe="/:@!$&'()*+,;=-._~")
    query: bytes = scope.get("query_string") or b""
    if query:
        target += "?" + (
            query.decode("ascii") if query.isascii() else quote(query, safe="/?:@!$&'()*+,;=%")
        )
    return target
