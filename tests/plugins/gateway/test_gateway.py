"""The gateway plugin (plugins/gateway): rate limits, trusted proxies, CORS, validation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from courtyard.testing import ORIGIN, write_plugin
from courtyard_gateway.gateway import Gateway
from courtyard_gateway.rules import ConfigError, compile_path
from courtyard_gateway.store import BucketStore, MemoryBucketStore
from gateway_kit import ROUTES


def client_from(rt: Any, ip: str) -> httpx.AsyncClient:
    """A client on the same runtime whose direct peer address is `ip`."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher, client=(ip, 40000)),
        base_url=ORIGIN,
        headers={"Origin": ORIGIN},
    )


# Rate limits -----------------------------------------------------------------------------


async def test_limit_holds_exactly_with_decreasing_headers(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 3, "per": 60}])

    answers = [await rt.client.get("/svc/items") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    # Reset: the Unix time the bucket is full again (1 token takes 20 s here).
    now = time.time()
    resets = [int(a.headers["X-RateLimit-Reset"]) - now for a in answers]
    assert [round(r / 20) * 20 for r in resets] == [20, 40, 60, 60]
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "20"
    assert refused.json() == {
        "success": False,
        "error": {
            "code": "RATE_LIMIT_EXCEEDED",
            "message": "rate limit of 3 requests per 60 s exceeded; retry in 20 s",
        },
    }
    assert refused.headers["X-Request-Id"]
    assert "Retry-After" not in answers[0].headers


async def test_burst_is_the_bucket_size(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 100, "per": 60, "burst": 5}])

    codes = [(await rt.client.get("/svc/items")).status_code for _ in range(6)]

    assert codes == [200] * 5 + [429]


async def test_tokens_refill_over_time(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 2, "per": 0.2}])

    codes = [(await rt.client.get("/svc/items")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    refused = await rt.client.get("/svc/items")
    assert refused.headers["Retry-After"] == "1"  # never less than one second

    await asyncio.sleep(0.25)  # 0.1 s per token: full again
    codes = [(await rt.client.get("/svc/items")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_unmatched_routes_have_no_headers(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "methods": ["GET"]}])

    for _ in range(3):
        answer = await rt.client.get("/svc/open")
        assert answer.status_code == 200
        assert not any(h.lower().startswith("x-ratelimit") for h in answer.headers)
    # A method the rule does not list is not limited either.
    assert (await rt.client.get("/svc/items")).status_code == 200
    assert (await rt.client.get("/svc/items")).status_code == 429
    other = await rt.client.post("/svc/items")
    assert other.status_code == 405
    assert "X-RateLimit-Limit" not in other.headers


async def test_first_matching_rule_wins_and_globs(start):
    rt = await start(
        rules=[
            {"path": "/svc/runners/*/status", "limit": 1, "per": 60, "key": "global"},
            {"path": "/svc", "limit": 50, "per": 60},
        ]
    )

    first = await rt.client.get("/svc/runners/a/status")
    second = await rt.client.get("/svc/runners/b/status")  # same global bucket
    prefix = await rt.client.get("/svc/open")  # the prefix rule

    assert (first.status_code, second.status_code) == (200, 429)
    assert prefix.headers["X-RateLimit-Limit"] == "50"
    # A 404 under a limited prefix is limited too (and carries the headers).
    missing = await rt.client.get("/svc/nothing")
    assert missing.status_code == 404
    assert missing.headers["X-RateLimit-Remaining"] == "48"


async def test_keys_by_ip_header_and_param_are_independent(start):
    rt = await start(
        rules=[
            {
                "path": "/svc/runners/{runner}/status",
                "methods": ["POST"],
                "limit": 1,
                "per": 60,
                "key": "param:runner",
            },
            {"path": "/svc/runners/*/status", "limit": 1, "per": 60, "key": "header:X-API-Key"},
            {"path": "/svc/register", "limit": 1, "per": 60, "key": "ip"},
        ]
    )
    one, two = client_from(rt, "192.0.2.1"), client_from(rt, "192.0.2.2")
    async with one, two:
        # ip: each address has its own bucket
        assert (await one.post("/svc/register")).status_code == 200
        assert (await one.post("/svc/register")).status_code == 429
        assert (await two.post("/svc/register")).status_code == 200

        # header: each key value has its own bucket, whatever the address
        a = {"X-API-Key": "a"}
        assert (await one.get("/svc/runners/x/status", headers=a)).status_code == 200
        assert (await two.get("/svc/runners/y/status", headers=a)).status_code == 429
        b = {"X-API-Key": "b"}
        assert (await one.get("/svc/runners/x/status", headers=b)).status_code == 200

        # param: each runner has its own bucket, whatever the address or key
        assert (await one.post("/svc/runners/r1/status", headers=a)).status_code == 200
        assert (await two.post("/svc/runners/r1/status", headers=b)).status_code == 429
        assert (await one.post("/svc/runners/r2/status", headers=a)).status_code == 200

        # a missing header falls back to the client's address
        assert (await one.get("/svc/runners/x/status")).status_code == 200
        assert (await one.get("/svc/runners/x/status")).status_code == 429
        assert (await two.get("/svc/runners/x/status")).status_code == 200


async def test_param_key_from_the_query_string(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "param:user"}])

    assert (await rt.client.get("/svc/items?user=ann")).status_code == 200
    assert (await rt.client.get("/svc/items?user=ann")).status_code == 429
    assert (await rt.client.get("/svc/items?user=bob")).status_code == 200


async def test_trusted_proxies_honour_x_forwarded_for(start):
    rt = await start(
        rules=[{"path": "/svc/items", "limit": 1, "per": 60}],
        trusted_proxies=["10.0.0.0/8"],
    )
    proxy, stranger = client_from(rt, "10.1.2.3"), client_from(rt, "198.51.100.7")
    async with proxy, stranger:
        # Behind the trusted proxy, each forwarded client has its own bucket.
        xff = {"X-Forwarded-For": "203.0.113.5, 10.9.9.9"}  # client, then an inner proxy
        assert (await proxy.get("/svc/items", headers=xff)).status_code == 200
        assert (await proxy.get("/svc/items", headers=xff)).status_code == 429
        other = {"X-Forwarded-For": "203.0.113.6"}
        assert (await proxy.get("/svc/items", headers=other)).status_code == 200

        # An untrusted peer's X-Forwarded-For is ignored: rotating it does not help.
        for i in range(2):
            fake = {"X-Forwarded-For": f"203.0.113.{100 + i}"}
            answer = await stranger.get("/svc/items", headers=fake)
            assert answer.status_code == (200 if i == 0 else 429)


def test_client_addresses_are_parsed_once_and_remembered_within_bounds():
    from types import SimpleNamespace

    gateway = Gateway.from_settings({"trusted_proxies": ["10.0.0.0/8"]})

    def peer(addr: str, xff: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(remote_addr=addr, headers={"X-Forwarded-For": xff} if xff else {})

    assert gateway.client_ip(peer("192.0.2.1:5000")) == "192.0.2.1"
    assert gateway.client_ip(peer("[2001:db8::1]:443")) == "2001:db8::1"
    assert gateway.client_ip(peer("not an address")) == "not an address"
    assert gateway.client_ip(peer("192.0.2.1", "203.0.113.9")) == "192.0.2.1"  # untrusted
    assert gateway.client_ip(peer("10.0.0.1", "203.0.113.9, 10.0.0.2")) == "203.0.113.9"
    assert gateway.client_ip(peer("10.0.0.1", "203.0.113.9, junk")) == "10.0.0.1"
    for i in range(10_000):
        gateway.client_ip(peer(f"198.51.{i // 256}.{i % 256}"))
    assert len(gateway._peers) <= 4096


async def test_bucket_eviction_bounds_memory(start):
    rt = await start(
        rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "header:X-Key"}],
        max_keys=3,
    )

    assert (await rt.client.get("/svc/items", headers={"X-Key": "k0"})).status_code == 200
    assert (await rt.client.get("/svc/items", headers={"X-Key": "k0"})).status_code == 429
    for i in range(1, 4):  # three more keys push k0, the least recently used, out
        assert (await rt.client.get("/svc/items", headers={"X-Key": f"k{i}"})).status_code == 200
    assert (await rt.client.get("/svc/items", headers={"X-Key": "k0"})).status_code == 200


async def test_store_stays_bounded_and_follows_the_protocol():
    store = MemoryBucketStore(max_keys=100)
    assert isinstance(store, BucketStore)

    for i in range(10_000):
        await store.take(f"k{i}", capacity=5, rate=1.0, now=i / 1000)

    assert len(store) <= 100
    # An idle bucket that refilled is swept as new keys arrive.
    swept = MemoryBucketStore(max_keys=100)
    await swept.take("old", capacity=1, rate=1.0, now=0)
    await swept.take("new", capacity=1, rate=1.0, now=5)
    assert len(swept) == 1


async def test_store_arithmetic_with_an_injected_clock():
    store = MemoryBucketStore()

    results = [await store.take("k", capacity=2, rate=0.5, now=0) for _ in range(3)]
    assert results == [(True, 1, 2.0), (True, 0, 4.0), (False, 0, 4.0)]
    assert await store.take("k", capacity=2, rate=0.5, now=1) == (False, 0, 3.0)
    assert await store.take("k", capacity=2, rate=0.5, now=2) == (True, 0, 4.0)
    assert await store.take("k", capacity=2, rate=0.5, now=100) == (True, 1, 2.0)


# CORS -----------------------------------------------------------------------------------

CORS = [
    {
        "path": "/svc/items",
        "origins": ["https://app.example"],
        "methods": ["GET", "POST"],
        "headers": ["Content-Type", "X-API-Key"],
        "max_age": 600,
        "credentials": True,
    },
    {"path": "/svc/open", "origins": "*"},
]


async def test_cors_preflight(start):
    rt = await start(cors=CORS, rules=[{"path": "/svc", "limit": 100, "per": 60}])

    answer = await rt.client.options(
        "/svc/items",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert answer.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST"
    assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type, X-API-Key"
    assert answer.headers["Access-Control-Max-Age"] == "600"
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in answer.headers["Vary"]
    assert "X-RateLimit-Limit" not in answer.headers  # preflights take no token


async def test_cors_actual_request_and_wildcard(start):
    rt = await start(cors=CORS, rules=[{"path": "/svc/items", "limit": 1, "per": 60}])
    headers = {"Origin": "https://app.example"}

    ok = await rt.client.get("/svc/items", headers=headers)
    refused = await rt.client.get("/svc/items", headers=headers)
    anyone = await rt.client.get("/svc/open", headers={"Origin": "https://else.example"})

    for answer in (ok, refused):  # a 429 is readable by the page too
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in answer.headers["Vary"]
        assert "X-RateLimit-Remaining" in answer.headers["Access-Control-Expose-Headers"]
    assert refused.status_code == 429
    assert anyone.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in anyone.headers
    # Wildcard preflight echoes the requested headers.
    pre = await rt.client.options(
        "/svc/open",
        headers={
            "Origin": "https://else.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-custom",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Headers"] == "x-custom"


async def test_cors_disallowed_origin_gets_no_headers(start):
    rt = await start(cors=CORS)
    evil = {"Origin": "https://evil.example"}

    actual = await rt.client.get("/svc/items", headers=evil)
    pre = await rt.client.options(
        "/svc/items", headers={**evil, "Access-Control-Request-Method": "POST"}
    )
    elsewhere = await rt.client.get("/svc/register", headers={"Origin": "https://app.example"})

    assert actual.status_code == 200
    assert pre.status_code != 204
    for answer in (actual, pre, elsewhere):
        assert not any(h.lower().startswith("access-control-") for h in answer.headers)


# Validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"path": "/a", "limit": 0, "per": 60}], 'rules[0] (path "/a"): limit must be a positive'),
        (
            [
                {"path": "/a", "limit": 1, "per": 1},
                {"path": "/b", "limit": 1, "per": 1, "key": "cookie:x"},
            ],
            "rules[1] (path \"/b\"): key 'cookie:x'",
        ),
        ([{"path": "b", "limit": 1, "per": 1}], 'rules[0] (path "b"): path must start with /'),
        ([{"path": "/a", "limit": 1}], 'rules[0] (path "/a"): per is required'),
        ([{"path": "/a", "limit": 1, "per": 1, "rate": 3}], "unknown key 'rate'"),
    ],
)
async def test_a_bad_rule_fails_the_plugin(start, rules, message):
    rt = await start(rules=rules)

    listed = (await rt.client.get("/api/plugins/")).json()
    gateway = next(p for p in listed if p["name"] == "gateway")

    assert gateway["status"] == "failed"
    assert gateway["error"].startswith(
        "courtyard_startup raised ConfigError: invalid gateway configuration: "
    )
    assert message in gateway["error"]
    assert (await rt.client.get("/svc/items")).status_code == 200  # the rest still serves


async def test_bad_cors_and_proxies_are_named():
    with pytest.raises(ConfigError, match=r"cors\[0\] \(path \"/a\"\): origins"):
        Gateway.from_settings({"cors": [{"path": "/a", "origins": 3}]})
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\] \('nope'\)"):
        Gateway.from_settings({"trusted_proxies": ["10.0.0.1", "nope"]})
    with pytest.raises(ConfigError, match=r"cors\[0\] .*headers may not list X-Courtyard"):
        Gateway.from_settings(
            {"cors": [{"path": "/a", "origins": "*", "headers": ["x-buntime-internal"]}]}
        )


async def test_cors_never_allows_the_internal_headers(start):
    rt = await start(cors=CORS)
    pre = await rt.client.options(
        "/svc/open",
        headers={
            "Origin": "https://else.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-custom, X-Courtyard-Internal,x-buntime-internal",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Headers"] == "x-custom"


def test_path_patterns():
    import re

    def matches(pattern: str, path: str) -> bool:
        return re.fullmatch(compile_path(pattern, "g")[0], path) is not None

    assert matches("/api/runners", "/api/runners")
    assert matches("/api/runners", "/api/runners/x/jobs")
    assert not matches("/api/runners", "/api/runnersx")
    assert matches("/api/runners/*", "/api/runners/x")
    assert not matches("/api/runners/*", "/api/runners/x/jobs")
    assert matches("/api/runners/**", "/api/runners/x/jobs")
    assert matches("/api/runners/{id}/jobs", "/api/runners/x/jobs")
    assert not matches("/api/runners/{id}/jobs", "/api/runners/x/y/jobs")


async def test_installed_as_a_distribution(courtyard, plugin_dir):
    write_plugin(plugin_dir, "svc", code=ROUTES)
    rt = await courtyard(plugins={"gateway": {"rules": [{"path": "/svc", "limit": 1, "per": 60}]}})

    listed = (await rt.client.get("/api/plugins/")).json()

    gateway = next(p for p in listed if p["name"] == "gateway")
    assert (gateway["status"], gateway["source"]) == ("loaded", "entry point")
    assert (await rt.client.get("/svc/items")).status_code == 200
    assert (await rt.client.get("/svc/items")).status_code == 429
