"""The event bus (memory and Redis), its SSE and WebSocket helpers, the runtime's events."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto.events as ws_events
from auth_kit import SECRET, bearer, claims, hs256
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.services import make_event_bus
from courtyard.services.events import MemoryEventBus
from courtyard.services.events_redis import RedisEventBus
from courtyard.settings import Settings, load_settings
from courtyard.testing import free_port, write_plugin
from courtyard_sdk import SettingsError
from courtyard_sdk.events import GAP_TOPIC, MAX_EVENT_BYTES, parse_event_id
from courtyard_sdk.services import (
    Event,
    EventBusUnavailable,
    EventError,
    SubscriptionLagged,
)
from servers import REDIS_SERVER, need_redis
from ws_client import WebSocketClient

INTERNAL = {"X-Courtyard-Internal": "true"}


async def take(subscription: Any, count: int, timeout: float = 5) -> list[Event]:
    """The next `count` events of a subscription."""
    events = []
    async with asyncio.timeout(timeout):
        for _ in range(count):
            events.append(await anext(subscription))
    return events


async def nothing_more(subscription: Any, wait: float = 0.1) -> bool:
    """Whether no event arrives within `wait` seconds."""
    try:
        async with asyncio.timeout(wait):
            await anext(subscription)
    except TimeoutError:
        return True
    return False


# The memory bus --------------------------------------------------------------------------


@pytest.fixture
async def bus() -> AsyncIterator[MemoryEventBus]:
    bus = MemoryEventBus(history=100)
    await bus.start()
    yield bus
    await bus.close()


async def test_subscribers_get_the_events_of_their_topics(bus):
    async with bus.subscribe("notes.*") as notes, bus.subscribe("*") as everything:
        first = await bus.publish("notes.added", {"text": "hi", "tags": ("a", "b")})
        await bus.publish("tasks.done", [1, 2])
        second = await bus.publish("notes.removed", None)

        got = await take(notes, 2)
        assert [e.topic for e in got] == ["notes.added", "notes.removed"]
        assert got[0] == first
        # Data is what JSON gives back, as a Redis subscriber would see it.
        assert got[0].data == {"text": "hi", "tags": ["a", "b"]}
        assert got[1].data is None
        assert await nothing_more(notes)
        assert [e.topic for e in await take(everything, 3)] == [
            "notes.added",
            "tasks.done",
            "notes.removed",
        ]
    assert parse_event_id(first.id) < parse_event_id(second.id)
    assert abs(first.time - time.time()) < 5
    assert bus.subscriber_count == 0


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*", ["a", "a.b.c"], []),
        ("queues.*", ["queues.task", "queues.task.done"], ["queues", "queuesx.a", "vaults.x"]),
        ("*.failed", ["a.failed", "a.b.failed"], ["failed", "a.failed.no"]),
        ("runs.?", ["runs.1"], ["runs.12", "runs"]),
        ("exact.topic", ["exact.topic"], ["exact.topics", "Exact.topic"]),
    ],
)
async def test_topic_patterns(bus, pattern, matches, misses):
    async with bus.subscribe(pattern) as subscription:
        for topic in misses + matches:
            await bus.publish(topic, topic)
        got = await take(subscription, len(matches))
        assert [e.topic for e in got] == matches
        assert await nothing_more(subscription)


async def test_several_patterns_and_tenants(bus):
    async with (
        bus.subscribe("a.*", "b.x", tenant="t1") as tenant_one,
        bus.subscribe("a.*", "b.x") as everyone,
    ):
        await bus.publish("a.1", 1, tenant="t1")
        await bus.publish("a.2", 2, tenant="t2")
        await bus.publish("b.x", 3)
        await bus.publish("b.x", 4, tenant="t1")
        assert [e.data for e in await take(tenant_one, 2)] == [1, 4]
        assert await nothing_more(tenant_one)
        got = await take(everyone, 4)
        assert [(e.data, e.tenant) for e in got] == [(1, "t1"), (2, "t2"), (3, None), (4, "t1")]


@pytest.mark.parametrize(
    ("topic", "data", "message"),
    [
        ("", 1, "invalid topic"),
        ("a..b", 1, "invalid topic"),
        ("a b", 1, "invalid topic"),
        ("a.*", 1, "invalid topic"),
        ("x" * 201, 1, "longer than 200"),
        ("a.b", {1, 2}, "not JSON-serialisable: Object of type set"),
        ("a.b", {"x": object()}, "not JSON-serialisable"),
        ("a.b", math.nan, "not JSON-serialisable"),
        ("a.b", "é" * (MAX_EVENT_BYTES // 2 + 1), f"the limit is {MAX_EVENT_BYTES}"),
    ],
)
async def test_publish_refuses_bad_topics_and_data(bus, topic, data, message):
    async with bus.subscribe("*") as subscription:
        with pytest.raises(EventError, match=message):
            await bus.publish(topic, data)
        assert await nothing_more(subscription)  # nothing was published


@pytest.mark.parametrize(
    ("patterns", "kwargs", "message"),
    [
        ((), {}, "at least one topic pattern"),
        (("a b",), {}, "invalid topic pattern"),
        (("a.[bc]",), {}, "invalid topic pattern"),
        (("a.*",), {"last_event_id": "12"}, "invalid event id"),
        (("a.*",), {"last_event_id": "a-1"}, "invalid event id"),
    ],
)
async def test_subscribe_refuses_bad_patterns_and_ids(bus, patterns, kwargs, message):
    with pytest.raises(EventError, match=message):
        async with bus.subscribe(*patterns, **kwargs):
            pass
    assert bus.subscriber_count == 0


async def test_resume_within_the_history_replays_exactly_what_was_missed(bus):
    published = [await bus.publish(f"n.{i}", i) for i in range(5)]
    await bus.publish("other", "skipped by the pattern")
    async with bus.subscribe("n.*", last_event_id=published[1].id) as subscription:
        assert subscription.gap is False
        assert [e.data for e in await take(subscription, 3)] == [2, 3, 4]
        live = await bus.publish("n.live", "live")
        assert await take(subscription, 1) == [live]
        assert subscription.last_event_id == live.id
    # From the newest id: nothing to replay, nothing missed.
    async with bus.subscribe("n.*", last_event_id=live.id) as subscription:
        assert subscription.gap is False
        assert await nothing_more(subscription)


async def test_resume_beyond_the_history_replays_what_is_held_and_reports_the_gap():
    bus = MemoryEventBus(history=3)
    published = [await bus.publish("n", i) for i in range(6)]  # 3, 4, 5 are held
    async with bus.subscribe("n", last_event_id=published[0].id) as subscription:
        assert subscription.gap is True
        assert [e.data for e in await take(subscription, 3)] == [3, 4, 5]
    # The last event that left the history: everything after it is still held.
    async with bus.subscribe("n", last_event_id=published[2].id) as subscription:
        assert subscription.gap is False
        assert [e.data for e in await take(subscription, 3)] == [3, 4, 5]
    await bus.close()


async def test_resume_with_ids_from_before_a_restart_or_from_elsewhere():
    old = MemoryEventBus()
    before_restart = await old.publish("n", "lost")
    await old.close()
    await asyncio.sleep(0.002)  # a restart takes longer than a millisecond
    bus = MemoryEventBus()
    async with bus.subscribe("n", last_event_id=before_restart.id) as subscription:
        assert subscription.gap is True
        assert await nothing_more(subscription)
    future = f"{time.time_ns() // 1_000_000 + 60_000}-0"
    async with bus.subscribe("n", last_event_id=future) as subscription:
        assert subscription.gap is True
        live = await bus.publish("n", "live")  # still delivered
        assert await take(subscription, 1) == [live]
    await bus.close()


async def test_without_history_a_resume_is_complete_only_from_the_newest_event():
    bus = MemoryEventBus(history=0)
    first = await bus.publish("n", 1)
    second = await bus.publish("n", 2)
    async with bus.subscribe("n", last_event_id=second.id) as subscription:
        assert subscription.gap is False
    async with bus.subscribe("n", last_event_id=first.id) as subscription:
        assert subscription.gap is True
        assert await nothing_more(subscription)
    await bus.close()


async def test_ids_increase_in_publication_order_under_concurrency(bus):
    async with bus.subscribe("*") as subscription:
        published = await asyncio.gather(*(bus.publish("c", i) for i in range(300)))
        got = await take(subscription, 300)
    keys = [parse_event_id(e.id) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == 300
    assert {e.id for e in published} == {e.id for e in got}


async def test_a_subscriber_that_falls_behind_lags_and_resumes_without_loss():
    bus = MemoryEventBus(history=100, queue_size=3)
    async with bus.subscribe("*") as slow, bus.subscribe("*") as fast:
        published = []
        for i in range(6):
            published.append(await bus.publish("n", i))
            assert (await take(fast, 1))[0].data == i  # the fast one keeps up
        assert bus.subscriber_count == 1  # the slow one was dropped at once
        # It gets what was queued, then the signal, with where to resume from.
        assert [e.data for e in await take(slow, 3)] == [0, 1, 2]
        with pytest.raises(SubscriptionLagged) as lagged:
            await anext(slow)
        assert lagged.value.last_event_id == published[2].id
        assert "more than 3 events pending" in str(lagged.value)
    async with bus.subscribe("*", last_event_id=lagged.value.last_event_id) as again:
        assert again.gap is False
        assert [e.data for e in await take(again, 3)] == [3, 4, 5]
    assert bus.subscriber_count == 0
    await bus.close()


async def test_leaving_or_cancelling_a_subscription_leaves_nothing_behind(bus):
    async def consume() -> None:
        async with bus.subscribe("*") as subscription:
            async for _ in subscription:
                pass

    tasks = [asyncio.create_task(consume()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert bus.subscriber_count == 5
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert bus.subscriber_count == 0

    with pytest.raises(RuntimeError, match="boom"):
        async with bus.subscribe("*"):
            raise RuntimeError("boom")
    assert bus.subscriber_count == 0


async def test_closing_the_bus_ends_subscriptions_and_refuses_more():
    bus = MemoryEventBus()
    async with bus.subscribe("*") as subscription:
        waiting = asyncio.create_task(anext(subscription))
        await asyncio.sleep(0.01)
        await bus.close()
        with pytest.raises(StopAsyncIteration):
            await waiting
    with pytest.raises(EventBusUnavailable, match="closed"):
        await bus.publish("n", 1)
    with pytest.raises(EventBusUnavailable, match="closed"):
        async with bus.subscribe("*"):
            pass


# Settings --------------------------------------------------------------------------------


def test_the_setting_picks_the_bus(tmp_path):
    bus = make_event_bus(Settings(data_dir=tmp_path, event_history=7))
    assert isinstance(bus, MemoryEventBus) and bus._history.maxlen == 7
    url = "redis://127.0.0.1:1/0"
    redis_bus = make_event_bus(Settings(data_dir=tmp_path, event_bus="redis", redis_url=url))
    assert isinstance(redis_bus, RedisEventBus) and redis_bus.maxlen == 1000


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"COURTYARD_EVENT_BUS": "redis"}, 'event_bus = "redis" needs redis_url'),
        (
            {"COURTYARD_EVENT_BUS": "redis", "COURTYARD_REDIS_URL": "http://x"},
            "redis_url: Redis URL must specify one of the following schemes",
        ),
        ({"COURTYARD_EVENT_BUS": "kafka"}, "invalid settings: event_bus: Input should be"),
        ({"COURTYARD_EVENT_HISTORY": "-1"}, "event_history: Input should be greater"),
    ],
)
def test_bad_event_bus_settings_are_refused_when_read(tmp_path, environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({}, environ=environ)
    # Every command says so cleanly, not only serve.
    result = CliRunner().invoke(main, ["plugins", "list", "--data-dir", str(tmp_path)], env=environ)
    assert result.exit_code == 1 and message.split(":")[0] in result.output


def test_serve_refuses_redis_without_a_url(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "courtyard", "serve", "--data-dir", str(tmp_path)],
        env={"COURTYARD_EVENT_BUS": "redis", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert 'event_bus = "redis" needs redis_url' in result.stderr


def test_serve_refuses_an_unreachable_redis(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "courtyard", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        env={"COURTYARD_EVENT_BUS": "redis", "COURTYARD_REDIS_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"cannot reach Redis at {url} (redis_url)" in result.stderr


# The Redis bus ---------------------------------------------------------------------------


@asynccontextmanager
async def redis_bus(url: str, key: str, **options: Any) -> AsyncIterator[RedisEventBus]:
    bus = RedisEventBus(url, key=key, **options)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def key() -> str:
    return f"test:events:{uuid.uuid4().hex}"


async def test_two_instances_see_each_others_events(redis, key):
    async with redis_bus(redis.url, key) as one, redis_bus(redis.url, key) as two:
        async with one.subscribe("notes.*") as on_one, two.subscribe("*") as on_two:
            a = await one.publish("notes.added", {"by": "one"}, tenant="t1")
            b = await two.publish("notes.added", {"by": "two"})
            c = await two.publish("tasks.done", (1, 2))
            assert await take(on_one, 2) == [a, b]
            assert await take(on_two, 3) == [a, b, c]
            assert c.data == [1, 2] and a.tenant == "t1"
            assert parse_event_id(a.id) < parse_event_id(b.id) < parse_event_id(c.id)
        assert one.subscriber_count == two.subscriber_count == 0


async def test_redis_publish_refuses_bad_data_before_reaching_redis(redis, key):
    async with redis_bus(redis.url, key) as bus, bus.subscribe("*") as subscription:
        with pytest.raises(EventError, match="not JSON-serialisable"):
            await bus.publish("a.b", {1})
        with pytest.raises(EventError, match="invalid topic"):
            await bus.publish("a..b", 1)
        assert await nothing_more(subscription)


async def test_redis_resume_within_and_beyond_the_history(redis, key):
    from redis.asyncio import Redis

    async with redis_bus(redis.url, key) as one, redis_bus(redis.url, key) as two:
        published = [await one.publish(f"n.{i}", i) for i in range(6)]
        await one.publish("other", "not matched")
        async with two.subscribe("n.*", last_event_id=published[1].id) as subscription:
            assert subscription.gap is False
            assert [e.data for e in await take(subscription, 4)] == [2, 3, 4, 5]
            live = await one.publish("n.live", "live")
            assert await take(subscription, 1) == [live]
            assert await nothing_more(subscription)  # the replay and the reader overlap

        client = Redis.from_url(redis.url)
        await client.xtrim(key, maxlen=5, approximate=False)  # n.0 to n.2 leave
        await client.aclose()
        async with two.subscribe("n.*", last_event_id=published[0].id) as subscription:
            assert subscription.gap is True
            assert [e.data for e in await take(subscription, 4)] == [3, 4, 5, "live"]
        # n.2 was the last to leave: everything after it is held.
        async with two.subscribe("n.*", last_event_id=published[2].id) as subscription:
            assert subscription.gap is False
            assert [e.data for e in await take(subscription, 4)] == [3, 4, 5, "live"]
        future = f"{time.time_ns() // 1_000_000 + 60_000}-0"
        async with two.subscribe("n.*", last_event_id=future) as subscription:
            assert subscription.gap is True
            later = await one.publish("n.later", "later")
            assert await take(subscription, 1) == [later]


async def test_redis_resume_on_a_new_stream_reports_a_gap(redis, key):
    async with redis_bus(redis.url, key) as bus:
        async with bus.subscribe("*", last_event_id="1700000000000-0") as subscription:
            assert subscription.gap is True  # no stream: whatever came after is gone
            first = await bus.publish("n", 1)
            assert await take(subscription, 1) == [first]
        async with bus.subscribe("*", last_event_id="1700000000000-0") as subscription:
            assert subscription.gap is True  # older than this stream's first entry


async def test_redis_subscriber_that_falls_behind_lags(redis, key):
    async with redis_bus(redis.url, key, queue_size=2) as bus:
        async with bus.subscribe("*") as slow:
            published = [await bus.publish("n", i) for i in range(4)]
            async with asyncio.timeout(5):
                while bus.subscriber_count:
                    await asyncio.sleep(0.01)
            assert [e.data for e in await take(slow, 2)] == [0, 1]
            with pytest.raises(SubscriptionLagged) as lagged:
                await anext(slow)
            assert lagged.value.last_event_id == published[1].id
        async with bus.subscribe("*", last_event_id=lagged.value.last_event_id) as again:
            assert [e.data for e in await take(again, 2)] == [2, 3]


async def test_redis_bus_refuses_to_start_without_redis():
    bus = RedisEventBus(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(EventBusUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await bus.start()
    await bus.close()
    with pytest.raises(EventBusUnavailable, match="closed"):
        await bus.publish("n", 1)


@contextmanager
def redis_on(folder: Path, port: int, *, persistent: bool) -> Iterator[None]:
    """A redis-server on a given loopback port (so that it can come back on it)."""
    need_redis()  # skipped, naming the Debian package, without redis-server
    folder.mkdir(parents=True, exist_ok=True)
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "yes" if persistent else "no"]
    with (folder / "redis.log").open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "no redis-server"
            time.sleep(0.02)
        yield
    finally:
        process.terminate()
        process.wait(10)


async def wait_until(condition: Any, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_redis_restart_with_persistence_keeps_subscribers(tmp_path, key):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_on(tmp_path / "redis", port, persistent=True):
        bus = RedisEventBus(url, key=key, block_ms=200)
        await bus.start()
        subscription_cm = bus.subscribe("*")
        subscription = await subscription_cm.__aenter__()
        before = await bus.publish("n", "before")
        assert await take(subscription, 1) == [before]
    try:
        with pytest.raises(EventBusUnavailable, match="cannot publish 'n'"):
            await bus.publish("n", "during")
        with redis_on(tmp_path / "redis", port, persistent=True):
            # The reader reconnects by itself; publishing works at once.
            after = await bus.publish("n", "after")
            assert await take(subscription, 1, timeout=15) == [after]
            assert bus.subscriber_count == 1
            async with bus.subscribe("*", last_event_id=before.id) as resumed:
                assert resumed.gap is False
                assert await take(resumed, 1) == [after]
            await subscription_cm.__aexit__(None, None, None)
            await bus.close()
    finally:
        await bus.close()


async def test_redis_restart_that_lost_events_makes_subscribers_resume(tmp_path, key):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_on(tmp_path / "redis", port, persistent=False):
        bus = RedisEventBus(url, key=key, block_ms=200)
        await bus.start()
        subscription_cm = bus.subscribe("*")
        subscription = await subscription_cm.__aenter__()
        before = await bus.publish("n", "before")
        assert await take(subscription, 1) == [before]
    try:
        with redis_on(tmp_path / "redis", port, persistent=False):
            with pytest.raises(SubscriptionLagged, match="Redis lost events") as lagged:
                await take(subscription, 1, timeout=15)
            assert lagged.value.last_event_id == before.id
            await subscription_cm.__aexit__(None, None, None)
            async with bus.subscribe("*", last_event_id=before.id) as resumed:
                assert resumed.gap is True
                after = await bus.publish("n", "after")
                assert await take(resumed, 1) == [after]
    finally:
        await bus.close()


# Streaming to clients through a real server -------------------------------------------

FEED = """
from courtyard_sdk import Blueprint, hookimpl, request
from courtyard_sdk.events import sse_response, stream_to_websocket


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("feed", __name__)

    @bp.get("/sse")
    async def sse():
        return sse_response(
            ctx.events,
            *request.args.get("topics", "notes.*").split(","),
            heartbeat=float(request.args.get("heartbeat", "15")),
            named=request.args.get("named", "true") == "true",
        )

    @bp.get("/upper")
    async def upper():
        def shout(event):
            return None if event.data == "skip" else {"said": str(event.data).upper()}

        return sse_response(ctx.events, "notes.*", transform=shout)

    @bp.websocket("/ws")
    async def ws():
        await stream_to_websocket(ctx.events, "notes.*")

    @bp.post("/publish")
    async def publish():
        body = await request.get_json()
        event = await ctx.events.publish(body["topic"], body["data"], tenant=body.get("tenant"))
        return {"id": event.id}

    @bp.get("/subscribers")
    async def subscribers():
        return {"count": ctx.events.subscriber_count}

    return bp
"""


@pytest.fixture
def feed_plugin(plugin_dir: Path) -> Path:
    return write_plugin(plugin_dir, "feed", 'base = "/feed"\n', FEED)


class SSE:
    """Reads a text/event-stream response: events as dicts of their fields."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 10) -> dict[str, str] | None:
        """The next event, or None when the stream ends."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        return None

    async def comment(self, text: str, timeout: float = 10) -> None:
        """Read until the comment `text` arrives (events before it are an error)."""
        async with asyncio.timeout(timeout):
            while text not in self.comments:
                line = await anext(self.lines)
                assert line == "" or line.startswith(":"), line
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())


@asynccontextmanager
async def sse(client: httpx.AsyncClient, path: str, **kwargs: Any) -> AsyncIterator[SSE]:
    async with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        stream = SSE(response)
        await stream.comment("open")  # subscribed from here on
        yield stream


async def publish(
    client: httpx.AsyncClient, topic: str, data: Any, tenant: str | None = None
) -> str:
    body = {"topic": topic, "data": data, "tenant": tenant}
    answer = await client.post("/feed/publish", json=body, headers=INTERNAL)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


async def test_sse_streams_events_and_resumes_with_last_event_id(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False)
    idle = subscribers(server)  # the runtime's own (services/replication.py)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/feed/sse") as stream:
            headers = stream.response.headers
            assert headers["content-type"] == "text/event-stream; charset=utf-8"
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            ids = [await publish(client, "notes.added", {"n": i}) for i in range(3)]
            await publish(client, "tasks.done", "not for this stream")
            for i in range(3):
                assert await stream.next() == {
                    "id": ids[i],
                    "event": "notes.added",
                    "data": json.dumps({"n": i}, separators=(",", ":")),
                }
        head = await client.head("/feed/sse")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
        # The client went away: its subscription went with it.
        await wait_until(lambda: subscribers(server) == idle)

        missed = [await publish(client, "notes.added", {"n": i}) for i in range(3, 5)]
        async with sse(client, "/feed/sse", headers={"Last-Event-ID": ids[2]}) as stream:
            assert [(await stream.next())["id"] for _ in missed] == missed
            live = await publish(client, "notes.added", {"n": 5})
            assert (await stream.next())["id"] == live
        # The query parameter does the same for a first connection.
        async with sse(client, f"/feed/sse?lastEventId={missed[0]}") as stream:
            assert [(await stream.next())["id"] for _ in range(2)] == [missed[1], live]


async def test_sse_sends_heartbeats_envelopes_and_transforms(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/feed/sse?heartbeat=0.2&named=false") as stream:
            await stream.comment("keep-alive", timeout=5)
            event_id = await publish(client, "notes.added", [1])
            got = await stream.next()
            assert "event" not in got and got["id"] == event_id
            envelope = json.loads(got["data"])
            assert envelope["topic"] == "notes.added" and envelope["data"] == [1]
            assert envelope["id"] == event_id and isinstance(envelope["time"], float)
        async with sse(client, "/feed/upper") as stream:
            await publish(client, "notes.added", "skip")
            kept = await publish(client, "notes.added", "hi")
            got = await stream.next()
            assert got["id"] == kept and json.loads(got["data"]) == {"said": "HI"}


async def test_sse_announces_a_gap_and_refuses_bad_input(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False, event_history=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        ids = [await publish(client, "notes.added", i) for i in range(5)]
        async with sse(client, "/feed/sse", headers={"Last-Event-ID": ids[0]}) as stream:
            assert await stream.next() == {
                "event": GAP_TOPIC,
                "data": json.dumps({"lastEventId": ids[0]}, separators=(",", ":")),
            }
            assert [(await stream.next())["data"] for _ in range(2)] == ["3", "4"]

        answer = await client.get("/feed/sse", headers={"Last-Event-ID": "yesterday"})
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "INVALID_EVENT_ID"
        answer = await client.get("/feed/sse?topics=notes.[a]")
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "INVALID_TOPIC_PATTERN"


async def test_a_reload_ends_streams_and_clients_resume_on_the_new_generation(
    courtyard_server, feed_plugin
):
    # A long drain: the stream must end because its generation retires, not because the
    # drain timed out.
    server = courtyard_server(entry_points=False, drain_timeout=120)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with sse(client, "/api/stream?topics=notes.*") as stream:
            last = await publish(client, "notes.added", "before")
            assert (await stream.next())["id"] == last
            started = time.monotonic()
            answer = await client.post("/api/plugins/reload", headers=INTERNAL)
            assert answer.status_code == 200, answer.text
            assert await stream.next(timeout=20) is None  # the stream ended
            assert time.monotonic() - started < 20
        resume = {"Last-Event-ID": last}
        async with sse(client, "/api/stream?topics=courtyard.*", headers=resume) as stream:
            event = await stream.next()
            assert event["event"] == "courtyard.generation.serving"
            assert json.loads(event["data"]) == {"generation": 2, "plugins": ["feed"], "failed": []}


async def test_stopping_the_server_ends_open_streams_at_once(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False, drain_timeout=120)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        sse(client, "/feed/sse") as stream,
    ):
        started = time.monotonic()
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
        assert await stream.next(timeout=20) is None
        assert await stopping == 0
        assert time.monotonic() - started < 20


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_two_servers_on_redis_share_events(courtyard_server, feed_plugin, redis):
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    await client.delete("courtyard:events")  # the runtime's own stream, of earlier tests
    await client.aclose()
    settings = {"entry_points": False, "event_bus": "redis", "redis_url": redis.url}
    one, two = courtyard_server(**settings), courtyard_server(**settings)
    async with (
        httpx.AsyncClient(base_url=one.url, timeout=10) as on_one,
        httpx.AsyncClient(base_url=two.url, timeout=10) as on_two,
    ):
        async with sse(on_two, "/feed/sse") as stream:
            event_id = await publish(on_one, "notes.added", "from one")
            assert (await stream.next())["id"] == event_id
        later = await publish(on_two, "notes.added", "from two")
        async with sse(on_one, "/feed/sse", headers={"Last-Event-ID": event_id}) as stream:
            assert (await stream.next())["id"] == later


# WebSockets ------------------------------------------------------------------------------


def port_of(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


def subscribers(server: Any) -> int:
    """How many subscribers the server's event bus feeds (the feed plugin's count)."""
    return int(httpx.get(f"{server.url}/feed/subscribers").json()["count"])


async def frame(ws: WebSocketClient) -> dict[str, Any]:
    event = await ws.next()
    assert isinstance(event, ws_events.TextMessage), event
    return json.loads(event.data)


async def test_websocket_streams_events_and_resumes(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False, drain_timeout=120)
    port = port_of(server)
    idle = subscribers(server)  # the runtime's own (services/replication.py)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        ws, accepted = await WebSocketClient.connect(port, "/feed/ws")
        assert isinstance(accepted, ws_events.AcceptConnection)
        await wait_until(lambda: subscribers(server) > idle)
        await ws.send(ws_events.TextMessage("ignored"))
        first = await publish(client, "notes.added", {"a": 1})
        got = await frame(ws)
        assert got["id"] == first and got["topic"] == "notes.added" and got["data"] == {"a": 1}
        ws.close()
        await wait_until(lambda: subscribers(server) == idle)

        missed = await publish(client, "notes.added", "missed")
        ws, _ = await WebSocketClient.connect(port, f"/feed/ws?lastEventId={first}")
        assert (await frame(ws))["id"] == missed
        # A reload closes the socket with 1012: reconnect, to the new generation.
        answer = await client.post("/api/plugins/reload", headers=INTERNAL)
        assert answer.status_code == 200
        closed = await ws.next()
        assert isinstance(closed, ws_events.CloseConnection) and closed.code == 1012
        ws.close()

        ws, rejected = await WebSocketClient.connect(port, "/feed/ws?lastEventId=nope")
        assert isinstance(rejected, ws_events.RejectConnection)
        assert rejected.status_code == 400
        ws.close()


# The runtime's own events ----------------------------------------------------------------


async def test_the_runtime_announces_generations_and_failed_plugins(courtyard, plugin_dir):
    runtime = await courtyard(entry_points=False)
    bus = runtime.dispatcher.services.events
    async with bus.subscribe("courtyard.*") as events:
        write_plugin(plugin_dir, "broken", "", "raise RuntimeError('no luck')\n")
        answer = await runtime.reload()
        assert answer.status_code == 200
        failed, serving, recorded = await take(events, 3)
        assert failed.topic == "courtyard.plugin.failed"
        assert failed.data["generation"] == 2 and failed.data["name"] == "broken"
        assert "no luck" in failed.data["error"]
        assert serving.topic == "courtyard.generation.serving"
        assert serving.data == {
            "generation": 2,
            "plugins": [],
            "failed": [{"name": "broken", "error": failed.data["error"]}],
        }
        # The other instances reload too (services/replication.py).
        assert recorded.topic == "courtyard.store.changed"
        assert recorded.data == {"revision": await runtime.dispatcher.services.store.head()}

        runtime.dispatcher.settings = runtime.dispatcher.settings.model_copy(
            update={"strict": True}
        )
        answer = await runtime.reload()
        assert answer.status_code == 422
        (failure,) = await take(events, 1)
        assert failure.topic == "courtyard.generation.failed"
        assert failure.data["generation"] == 3 and "broken" in failure.data["error"]


async def test_plugins_get_the_bus_in_their_context(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "starter",
        "",
        "from courtyard_sdk import hookimpl\n\n"
        "@hookimpl\nasync def courtyard_startup(ctx):\n"
        "    await ctx.events.publish('starter.up', {'name': ctx.name})\n",
    )
    runtime = await courtyard(entry_points=False)
    bus = runtime.dispatcher.services.events
    async with bus.subscribe("starter.*", last_event_id="0-0") as events:
        (event,) = await take(events, 1)
        assert event.data == {"name": "starter"}


async def test_the_stream_endpoint_needs_a_credential_when_auth_is_on(courtyard):
    runtime = await courtyard(entry_points=False, jwt_secret="s" * 32)
    answer = await runtime.client.get("/api/stream")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"


async def test_the_stream_endpoint_shows_a_tenant_only_its_events(courtyard_server, feed_plugin):
    server = courtyard_server(entry_points=False, jwt_secret=SECRET)
    acme = bearer(hs256(claims(tenant_id="acme", roles=["viewer"])))
    admin = bearer(hs256(claims(roles=["admin"])))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        refused = await client.get(
            "/api/stream", headers=bearer(hs256(claims(permissions=["notes:read"])))
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "AUTHORIZATION_FAILED"
        async with (
            sse(client, "/api/stream?topics=notes.*", headers=acme) as for_acme,
            sse(client, "/api/stream?topics=notes.*", headers=admin) as for_admin,
        ):
            other = await publish(client, "notes.added", "other's", tenant="other")
            nobody = await publish(client, "notes.added", "nobody's")
            mine = await publish(client, "notes.added", "acme's", tenant="acme")
            assert (await for_acme.next())["id"] == mine
            assert [(await for_admin.next())["id"] for _ in range(3)] == [other, nobody, mine]
