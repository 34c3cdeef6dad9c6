"""Requests through a trusted proxy (proxies.py, setting `trusted_proxies`)."""

from __future__ import annotations

from typing import Any

import pytest
from courtyard.proxies import ProxyHeaders, networks
from courtyard_sdk import SettingsError


async def seen(
    trusted: list[str], client: str, headers: dict[str, str], kind: str = "http"
) -> dict[str, Any]:
    """The scope the app gets for a request from `client` with `headers`."""
    got: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.update(scope)

    scope = {
        "type": kind,
        "scheme": "ws" if kind == "websocket" else "http",
        "client": (client, 50000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await ProxyHeaders(app, networks(trusted))(scope, None, None)
    return got


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


async def test_a_trusted_proxy_gives_the_scheme_and_the_client():
    scope = await seen(["10.0.0.0/8"], "10.1.2.3", FORWARDED)
    assert scope["scheme"] == "https"
    assert scope["client"] == ("203.0.113.7", 0)


async def test_anyone_else_forwarding_is_ignored():
    scope = await seen(["10.0.0.0/8"], "192.0.2.1", FORWARDED)
    assert scope["scheme"] == "http"
    assert scope["client"] == ("192.0.2.1", 50000)


async def test_the_client_is_the_first_untrusted_hop_from_the_right():
    # The client sent its own X-Forwarded-For (spoofed), then two proxies appended.
    hops = {"X-Forwarded-For": "1.2.3.4, 203.0.113.7, 10.0.0.9"}
    scope = await seen(["10.0.0.0/8"], "10.0.0.1", hops)
    assert scope["client"] == ("203.0.113.7", 0)
    every_hop_trusted = {"X-Forwarded-For": "10.0.0.8, 10.0.0.9"}
    assert (await seen(["10.0.0.0/8"], "10.0.0.1", every_hop_trusted))["client"][0] == "10.0.0.8"


async def test_websockets_get_wss_and_unknown_schemes_are_ignored():
    assert (await seen(["::1"], "::1", FORWARDED, kind="websocket"))["scheme"] == "wss"
    odd = {"X-Forwarded-Proto": "gopher"}
    assert (await seen(["::1"], "::1", odd))["scheme"] == "http"


async def test_without_trusted_proxies_nothing_changes():
    scope = await seen([], "127.0.0.1", FORWARDED)
    assert (scope["scheme"], scope["client"]) == ("http", ("127.0.0.1", 50000))


def test_a_bad_entry_is_refused_by_name():
    with pytest.raises(SettingsError, match=r"'proxy\.example' is not an IP address"):
        networks(["10.0.0.1", "proxy.example"])


def test_a_served_runtime_checks_origins_as_its_trusted_proxy_saw_them(courtyard_server):
    import httpx

    def reload_via_tls_proxy(server: Any) -> httpx.Response:
        host = server.url.removeprefix("http://")
        headers = {"Origin": f"https://{host}", "X-Forwarded-Proto": "https"}
        return httpx.post(f"{server.url}/api/plugins/reload", headers=headers)

    behind = courtyard_server(entry_points=False, trusted_proxies=["127.0.0.1"])
    assert reload_via_tls_proxy(behind).status_code == 200
    direct = courtyard_server(entry_points=False)
    refused = reload_via_tls_proxy(direct)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "CSRF_FAILED")
