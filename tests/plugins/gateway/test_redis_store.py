"""The gateway's Redis bucket store: same arithmetic as the memory store, one budget
shared by several runtimes, expiring keys, a clear failure at startup, fail-open later."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard.testing import free_port, write_plugin
from courtyard_gateway.store import BucketStore, MemoryBucketStore, RedisBucketStore
from gateway_kit import GATEWAY, ROUTES, as_identity
from redis.asyncio import Redis
from servers import RedisServer, redis_server


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (on a free loopback port), for a test that stops
    it; the others share the session's `redis` and its keys are cleared around each."""
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def redis_client(redis: RedisServer) -> AsyncIterator[Redis]:
    """A client on the session's Redis, with no gateway bucket left from another test."""
    client = Redis.from_url(redis.url)

    async def clear() -> None:
        keys = await client.keys("courtyard:gateway:*")
        if keys:
            await client.delete(*keys)

    await clear()
    yield client
    await clear()
    await client.aclose()


@pytest.fixture
def redis_url(redis: RedisServer, redis_client: Redis) -> str:
    """The session Redis's URL, its gateway keys cleared (see `redis_client`)."""
    return redis.url


async def plugin_status(rt: Any) -> dict[str, Any]:
    listed = (await rt.client.get("/api/plugins/")).json()
    return next(p for p in listed if p["name"] == "gateway")


async def test_redis_store_matches_the_memory_store(redis_url):
    store = await RedisBucketStore.connect(redis_url)
    memory = MemoryBucketStore()
    assert isinstance(store, BucketStore)
    capacity, rate = 3, 10.0  # burst 3, one token per 0.1 s

    async def both(key: str) -> tuple[Any, Any]:
        return (
            await memory.take(key, capacity, rate, time.monotonic()),
            await store.take(key, capacity, rate, time.monotonic()),
        )

    try:
        steps = [await both("k") for _ in range(4)]
        await asyncio.sleep(0.15)  # 1.5 tokens back
        steps += [await both("k") for _ in range(2)]
        steps.append(await both("other"))  # another key: a full bucket
    finally:
        await store.aclose()

    expected = [(True, 2), (True, 1), (True, 0), (False, 0), (True, 0), (False, 0), (True, 2)]
    for (mem, red), want in zip(steps, expected, strict=True):
        assert mem[:2] == red[:2] == want
        assert red[2] == pytest.approx(mem[2], abs=0.03)
    assert steps[0][1][2] == pytest.approx(0.1, abs=0.01)
    assert steps[3][1][2] == pytest.approx(0.3, abs=0.01)


async def test_two_runtimes_share_one_budget(start, redis_url, redis_client):
    rule = {"path": "/svc/items", "limit": 5, "per": 60}
    one = await start(rules=[rule], redis_url=redis_url)
    two = await start(rules=[rule], redis_url=redis_url)
    assert one.dispatcher is not two.dispatcher
    for rt in (one, two):
        assert (await plugin_status(rt))["status"] == "loaded"

    answers = [await (one, two)[i % 2].client.get("/svc/items") for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    for rt in (one, two):  # the sixth is refused whichever runtime gets it
        refused = await rt.client.get("/svc/items")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "12"
    assert await redis_client.keys("courtyard:gateway:*") == [b"courtyard:gateway:0:ip:127.0.0.1"]


def serve_two(courtyard_server: Any, tmp_path: Path, **gateway: Any) -> list[Any]:
    """Two `courtyard serve` processes with the gateway and the `svc` routes, each with
    its own data directory, and the same gateway settings."""
    return [
        courtyard_server(
            entry_points=False, data_dir=tmp_path / f"data-{n}", plugins={"gateway": gateway}
        )
        for n in (1, 2)
    ]


async def burst(servers: list[Any], n: int) -> list[int]:
    """`n` concurrent requests, spread evenly over `servers`; their status codes."""
    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in servers]
    try:
        answers = await asyncio.gather(
            *(clients[i % len(clients)].get("/svc/items") for i in range(n))
        )
    finally:
        for client in clients:
            await client.aclose()
    return [a.status_code for a in answers]


@pytest.fixture
def served_plugins(plugin_dir: Path) -> None:
    """The gateway (as a directory plugin) and the `svc` routes, for `courtyard serve`."""
    shutil.copytree(GATEWAY, plugin_dir / "gateway")
    write_plugin(plugin_dir, "svc", code=ROUTES)


async def test_two_servers_under_concurrent_load_grant_exactly_one_budget(
    courtyard_server, served_plugins, tmp_path, redis_url, redis_client
):
    # Two server processes, 60 requests at once: the Lua take is atomic, so the shared
    # bucket grants exactly its 20 tokens, no more (no lost update between the servers).
    servers = serve_two(
        courtyard_server,
        tmp_path,
        rules=[{"path": "/svc/items", "limit": 20, "per": 600}],
        redis_url=redis_url,
    )

    results = await burst(servers, 60)

    # Two budgets would grant 40 (the test below); one shared budget grants 20.
    assert sorted(results) == [200] * 20 + [429] * 40
    assert await redis_client.keys("courtyard:gateway:*") == [b"courtyard:gateway:0:ip:127.0.0.1"]


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_without_redis_each_server_has_its_own_budget(
    courtyard_server, served_plugins, tmp_path
):
    # The control for the test above: in-memory buckets are per process.
    servers = serve_two(
        courtyard_server, tmp_path, rules=[{"path": "/svc/items", "limit": 20, "per": 600}]
    )

    results = await burst(servers, 60)

    assert results[0::2].count(200) == results[1::2].count(200) == 20


async def test_tiers_and_secrets_in_redis(identified, redis_url, redis_client):
    rule = {
        "path": "/svc/items",
        "key": "api_key",
        "tiers": {"premium": {"limit": 3, "per": 60}, "standard": {"limit": 1, "per": 60}},
        "tier": "role",
        "default_tier": "standard",
    }
    one = await identified(rules=[rule], redis_url=redis_url)
    two = await identified(rules=[rule], redis_url=redis_url)
    secret = "cy_0123456789abcdef"
    premium = {"X-API-Key": secret, **as_identity("k1", kind="key", roles=["premium"])}
    standard = {"X-API-Key": secret, **as_identity("k1", kind="key")}

    codes = [
        (await (one, two)[i % 2].client.get("/svc/items", headers=premium)).status_code
        for i in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    # The same key in another tier: another bucket, shared by both runtimes too.
    assert (await two.client.get("/svc/items", headers=standard)).status_code == 200
    assert (await one.client.get("/svc/items", headers=standard)).status_code == 429

    keys = sorted(k.decode() for k in await redis_client.keys("courtyard:gateway:*"))
    assert [k.split(":#")[0] for k in keys] == [
        "courtyard:gateway:0@premium:api_key",
        "courtyard:gateway:0@standard:api_key",
    ]
    assert not any(secret in key for key in keys)


async def test_idle_keys_expire(redis_url, redis_client):
    redis = redis_client
    store = await RedisBucketStore.connect(redis_url)
    try:
        await store.take("0:ip:x", capacity=2, rate=20.0, now=0)  # full again in 0.05 s
        assert 0 < await redis.pttl("courtyard:gateway:0:ip:x") <= 50
        await asyncio.sleep(0.15)
        assert await redis.exists("courtyard:gateway:0:ip:x") == 0
        # A slower bucket lives as long as its refill takes.
        await store.take("1:global", capacity=10, rate=1.0, now=0)
        assert 900 < await redis.pttl("courtyard:gateway:1:global") <= 1000
    finally:
        await store.aclose()


async def test_unreachable_redis_fails_the_plugin(start):
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    rt = await start(rules=[{"path": "/svc/items", "limit": 1, "per": 60}], redis_url=url)

    gateway = await plugin_status(rt)

    assert gateway["status"] == "failed"
    assert gateway["error"].startswith(
        "courtyard_startup raised StoreUnavailable: cannot reach Redis at "
        f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]} (redis_url): "
    )
    assert "secret" not in gateway["error"]
    assert (await rt.client.get("/svc/items")).status_code == 200  # the rest still serves


async def test_a_redis_outage_fails_open_with_one_warning(start, redis_srv, caplog):
    rt = await start(rules=[{"path": "/svc/items", "limit": 1, "per": 60}], redis_url=redis_srv.url)
    assert (await rt.client.get("/svc/items")).status_code == 200
    assert (await rt.client.get("/svc/items")).status_code == 429

    redis_srv.stop()
    with caplog.at_level(logging.WARNING, logger="courtyard.plugin.gateway"):
        codes = [(await rt.client.get("/svc/items")).status_code for _ in range(3)]

    assert codes == [200, 200, 200]
    warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(warnings) == 1
