"""Requests through a trusted proxy (setting `trusted_proxies`): the scheme and the client
address the proxy saw, from its `X-Forwarded-Proto` and `X-Forwarded-For` headers.

Behind a load balancer that terminates TLS, a request reaches the runtime over plain HTTP
from the balancer's address. Without this, the Origin check compares a browser's
`https://` origin with an `http://` request (and refuses it), session cookies are not
marked `Secure`, and failed sign-ins are counted against the balancer's address, which
then locks everyone out. The headers are believed only from the addresses listed: from
anyone else they are what a client chose to send, and are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from courtyard_sdk import SettingsError

from .asgi import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES = {"http": ("http", "ws"), "https": ("https", "wss")}  # -> (HTTP, WebSocket)


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The addresses and networks (`10.0.0.5`, `10.0.0.0/8`, `::1`) of `entries`.

    :raises SettingsError: naming an entry that is neither.
    """
    found = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise SettingsError(
                f"trusted_proxies: {entry!r} is not an IP address or network (10.0.0.0/8)"
            ) from None
    return tuple(found)


class ProxyHeaders:
    """ASGI middleware: for a request from a trusted proxy, the scope's `scheme` and
    `client` become those its forwarding headers name (see the module docstring)."""

    def __init__(self, app: ASGIApp, trusted: tuple[Network, ...]) -> None:
        self.app = app
        self.trusted = trusted

    def _trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the scope of a proxied request, then call the app."""
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self._trusts(client[0]):
            scope = self._forwarded(scope)
        await self.app(scope, receive, send)

    def _forwarded(self, scope: Scope) -> Scope:
        proto = forwarded_for = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
        scope = dict(scope)
        if proto is not None:
            # The last hop's word: the proxy next to the runtime appends or sets it.
            schemes = _SCHEMES.get(proto.rsplit(",", 1)[-1].strip().lower())
            if schemes is not None:
                scope["scheme"] = schemes[scope["type"] == "websocket"]
        if forwarded_for is not None:
            # Right to left, the first address that is not a trusted proxy is the client's:
            # anything left of it is what the client itself sent.
            hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
            client = next((hop for hop in reversed(hops) if not self._trusts(hop)), None)
            if client is None and hops:
                client = hops[0]
            if client is not None:
                scope["client"] = (client.strip("[]"), 0)
        return scope
