"""The gateway's Redis bucket store: same arithmetic as the memory store, one budget
shared by several runtimes, expiring keys, a clear failure at startup, fail-open later."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from courtyard_gateway.store import BucketStore, MemoryBucketStore, RedisBucketStore
from courtyard_sdk.testing import free_port
from redis.asyncio import Redis
from servers import RedisServer, available, redis_server

needs_redis = pytest.mark.skipif(
    not available(), reason="redis-server is not installed (apt-get install -y redis-server)"
)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped after the test."""
    if not available():
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def plugin_status(rt: Any) -> dict[str, Any]:
    listed = (await rt.client.get("/api/plugins/")).json()
    return next(p for p in listed if p["name"] == "gateway")


@needs_redis
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


@needs_redis
async def test_two_runtimes_share_one_budget(start, redis_url, redis):
    rule = {"path": "/svc/items", "limit": 5, "per": 60}
    one = await start(rules=[rule], redis_url=redis_url)
    two = await start(rules=[rule], redis_url=redis_url)
    assert (await plugin_status(one))["status"] == "loaded"

    answers = [await (one, two)[i % 2].client.get("/svc/items") for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    for rt in (one, two):  # the sixth is refused whichever runtime gets it
        refused = await rt.client.get("/svc/items")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "12"
    assert await redis.keys("courtyard:gateway:*") == [b"courtyard:gateway:0:ip:127.0.0.1"]


@needs_redis
async def test_idle_keys_expire(redis_url, redis):
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


@needs_redis
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
