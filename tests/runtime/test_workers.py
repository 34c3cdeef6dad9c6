"""The worker pool: ASGI apps served from real worker processes (no mocks).

Simple cases drive the pool in-process with httpx's ASGITransport; streaming, WebSocket
and broken-connection cases go through a real Hypercorn on a loopback port, because
ASGITransport buffers whole bodies.

Workers run sandboxed when bwrap is installed (as in CI), unsandboxed otherwise. The
apps' own `pid` is an id unique to their process (in a sandbox each is PID 1); the process
ids the runtime sees come from the pool (`spawned`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto.events as ws_events
from apps_kit import alive, client, descendants, make_app, real_server, spawned, until
from courtyard.apps.pool import (
    APP_DATA_ENV,
    BUSY,
    ENV_ALLOW_LIST,
    START_FAILED,
    AppSettings,
    WorkerApp,
    WorkerPool,
    processes,
)
from ws_client import WebSocketClient

MIB = 1024 * 1024
APP_CHUNK = b"0123456789abcdef" * (64 * 1024)  # what the stream app sends, per MiB

Scope = dict[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[Callable[..., WorkerPool]]:
    """`make_pool(**options)`; every pool is closed after the test, leaving no process."""
    pools: list[WorkerPool] = []

    def make(**options: Any) -> WorkerPool:
        options.setdefault("grace", 1.0)
        # Sandboxed wherever bwrap is installed; test_sandbox.py covers its absence.
        options.setdefault("allow_unsandboxed", shutil.which("bwrap") is None)
        pool = WorkerPool(tmp_path / "run", **options)
        record: list[Any] = []
        start = pool._spawn

        def spawn(app: WorkerApp) -> Any:
            worker = start(app)
            record.append(worker)
            # When it became ready (tests compare request times with start times).
            worker.ready.add_done_callback(
                lambda _, worker=worker: setattr(worker, "ready_at", time.monotonic())
            )
            return worker

        pool._spawn = spawn  # type: ignore[method-assign]
        pool.spawned = record  # type: ignore[attr-defined]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
        assert pool.stats() == []
        pids = spawned(pool)
        assert not [pid for pid in pids if alive(pid)]


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def rss() -> int:
    """This process's resident memory, in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- requests and what the app sees ------------------------------------------------------


async def test_app_sees_its_root_path_path_query_and_forwarded_headers(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo")
    async with client(pool, echo, root_path="/echo@1") as http:
        answer = await http.get(
            "/echo@1/items/a%2Fb?x=1&y=%C3%A9",
            headers={
                "X-Custom": "kept",
                "X-Forwarded-For": "203.0.113.7",
                "X-Courtyard-Root-Path": "/forged",  # private: the pool's own wins
                "X-Courtyard-Token": "guess",
            },
        )
    assert answer.status_code == 200
    assert answer.headers["x-echo"] == "yes"
    seen = answer.json()
    assert seen["root_path"] == "/echo@1"
    assert seen["path"] == "/echo@1/items/a/b"
    assert seen["raw_path"] == "/echo@1/items/a%2Fb"  # escapes survive the hop
    assert seen["query"] == "x=1&y=%C3%A9"
    assert seen["scheme"] == "http"
    assert seen["client"] == ["127.0.0.1", 0]
    headers = seen["headers"]
    assert headers["x-custom"] == ["kept"]
    assert headers["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["apps.test"]
    assert not [name for name in headers if name.startswith("x-courtyard")]
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert seen["cwd"] == str(echo.root) == seen["sys_path0"]
    assert spawned(pool) and os.getpid() not in spawned(pool)


async def test_a_caller_that_strips_the_prefix_is_passed_through_as_given(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo")

    async def router(scope: Scope, receive: Any, send: Any) -> None:
        # What the app router does: root_path gains the prefix, path loses it.
        prefix = "/echo@^1.0"
        rest = scope["path"][len(prefix) :]
        scope = {**scope, "root_path": prefix, "path": rest, "raw_path": rest.encode()}
        await pool.handle(echo, scope, receive, send)

    transport = httpx.ASGITransport(app=router)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://apps.test") as http:
        seen = (await http.get("/echo@^1.0/caf%C3%A9/x")).json()
    assert seen["root_path"] == "/echo@^1.0"
    assert seen["path"] == "/café/x"
    assert seen["raw_path"] == "/caf%C3%A9/x"


async def test_a_framework_builds_its_urls_under_the_root_path(apps, make_pool):
    """ASGI frameworks (Quart here, Starlette too) expect `path` to include `root_path`."""
    pool = make_pool()
    quart = make_app(apps, "quart")
    async with client(pool, quart, root_path="/quart@1") as http:
        http.base_url = httpx.URL("https://apps.example")
        answer = await http.get("/quart@1/hello")
    assert answer.status_code == 200
    assert answer.json() == {
        "root_path": "/quart@1",
        "path": "/hello",
        "url": "/quart@1/hello",
        "external": "https://apps.example/quart@1/hello",
    }


async def test_the_app_sees_only_its_own_environment(apps, make_pool, monkeypatch):
    monkeypatch.setenv("COURTYARD_DATABASE_URL", "postgresql://user:secret@db/courtyard")
    monkeypatch.setenv("SECRET_TOKEN", "secret")
    pool = make_pool()
    echo = make_app(apps, "echo", env={"ECHO_GREETING": "hi", "DATABASE_URL": "sqlite://"})
    async with client(pool, echo) as http:
        seen = (await http.get("/")).json()
    env = seen["env"]
    assert env["ECHO_GREETING"] == "hi"
    assert env["DATABASE_URL"] == "sqlite://"
    assert "COURTYARD_DATABASE_URL" not in env
    assert "SECRET_TOKEN" not in env
    assert not [value for value in env.values() if "secret" in value]
    assert env[APP_DATA_ENV] == env["HOME"]
    allowed = {*ENV_ALLOW_LIST, "PYTHONUNBUFFERED", "PYTHONPATH", "MALLOC_ARENA_MAX", APP_DATA_ENV}
    assert set(env) <= {*allowed, "ECHO_GREETING", "DATABASE_URL"}
    # The process's initial environment, as the kernel holds it, is as clean.
    (pid,) = spawned(pool)
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"secret" not in environ


async def test_a_worker_refuses_requests_without_the_pools_secret(apps, make_pool):
    """Another app's worker (same user) can reach the socket, but cannot use it."""
    pool = make_pool()
    echo = make_app(apps, "echo")
    async with client(pool, echo) as http:
        await http.get("/")
    paths = sorted(Path(pool._supervisor.sockets.folder or "").glob("*/*.sock"))
    assert [path.name for path in paths] == ["worker.sock", "ws.sock"]  # HTTP, WebSockets
    for path in paths:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as direct:
            answer = await direct.get("/", headers={"X-Courtyard-Token": "guess"})
        assert answer.status_code == 403


async def test_sockets_left_by_a_dead_runtime_are_removed(tmp_path, apps, make_pool):
    run = tmp_path / "run"
    run.mkdir()
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    stale = run / f"w{dead.pid}-1"
    (stale / "nested").mkdir(parents=True)
    (stale / "worker.sock").touch()
    old_style = run / f"w{dead.pid}-2.sock"
    old_style.touch()
    mine = run / f"w{os.getpid()}-999999"
    mine.mkdir()
    pool = make_pool()
    async with client(pool, make_app(apps, "echo")) as http:
        await http.get("/")
    # Unless the path was too long and a short folder was used:
    if pool._supervisor.sockets.folder == run:
        assert not stale.exists() and not old_style.exists()
        assert mine.exists()


async def test_a_worker_is_reused_and_reported(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo")
    async with client(pool, echo) as http:
        pids = {(await http.get("/")).json()["pid"] for _ in range(5)}
        posted = await http.post("/", content=b"x" * 1000)
    assert posted.status_code == 200
    assert len(pids) == 1
    (stats,) = pool.stats()
    assert stats["key"] == "echo@1.0.0"
    assert [stats["pid"]] == spawned(pool)
    assert stats["requests"] == 6
    assert stats["active"] == 0
    assert stats["age"] >= stats["idle"] >= 0


# -- failures ----------------------------------------------------------------------------


async def test_a_crash_answers_502_and_the_next_request_gets_a_new_worker(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty")
    async with client(pool, faulty) as http:
        first = (await http.get("/pid")).json()["pid"]
        crashed = await http.get("/crash")
        assert crashed.status_code == 502
        assert error_code(crashed) == "APP_CRASHED"
        assert "code 1" in crashed.json()["error"]["message"]
        second = (await http.get("/pid")).json()["pid"]
    assert second != first
    assert not alive(spawned(pool)[0])


async def test_a_worker_that_died_while_idle_is_replaced_without_an_error(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo")
    async with client(pool, echo) as http:
        first = (await http.get("/")).json()["pid"]
        os.kill(spawned(pool)[0], signal.SIGKILL)  # say, the kernel's OOM killer
        await until(lambda: pool.stats() == [])
        answer = await http.get("/")
    assert answer.status_code == 200
    assert answer.json()["pid"] != first


async def test_a_request_past_its_timeout_answers_504_and_the_worker_is_replaced(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty", timeout=1.0)
    async with client(pool, faulty) as http:
        first = (await http.get("/pid")).json()["pid"]
        started = time.monotonic()
        blocked = await http.get("/block")
        took = time.monotonic() - started
        assert blocked.status_code == 504
        assert error_code(blocked) == "APP_TIMEOUT"
        assert 0.9 < took < 3
        await until(lambda: not alive(spawned(pool)[0]))
        after = await http.get("/pid")
    assert after.status_code == 200
    assert after.json()["pid"] != first


async def test_an_app_over_its_memory_limit_dies_alone(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty", max_memory_mb=256)
    before = rss()
    async with client(pool, faulty) as http:
        first = (await http.get("/pid")).json()["pid"]
        hog = await http.get("/hog")
        assert hog.status_code == 502
        assert error_code(hog) == "APP_CRASHED"
        after = await http.get("/pid")
    assert after.status_code == 200
    assert after.json()["pid"] != first
    assert rss() - before < 50 * MIB  # the runtime's own memory did not follow


async def test_an_app_that_cannot_be_imported_answers_502_app_start_failed(apps, make_pool, caplog):
    caplog.set_level(logging.INFO, "courtyard.apps.workers")
    pool = make_pool()
    broken = make_app(apps, "broken")
    async with client(pool, broken) as http:
        answer = await http.get("/")
        again = await http.get("/")  # from memory for a moment: no restart storm
    assert answer.status_code == 502
    error = answer.json()["error"]
    # The client learns nothing of the app: what it printed (a password here) is logged.
    assert error == {"code": "APP_START_FAILED", "message": START_FAILED}
    assert "s3cret" not in answer.text
    assert "No module named 'courtyard_missing_dependency'" in caplog.text
    assert "s3cret-db-password" in caplog.text
    assert again.json() == answer.json()
    assert pool.stats() == []


async def test_a_bad_entry_answers_502_app_start_failed(apps, make_pool):
    pool = make_pool()
    wrong = make_app(apps, "echo", entry="echo_app:missing")
    async with client(pool, wrong) as http:
        answer = await http.get("/")
    assert answer.status_code == 502
    assert answer.json()["error"] == {"code": "APP_START_FAILED", "message": START_FAILED}


async def test_a_body_over_the_limit_answers_413(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo", max_body_size=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 400

    async with client(pool, echo) as http:
        declared = await http.post("/", content=b"x" * 1001)
        assert declared.status_code == 413
        assert error_code(declared) == "PAYLOAD_TOO_LARGE"
        assert pool.stats() == []  # refused before a worker was started
        streamed = await http.post("/", content=chunks())  # chunked: counted as it comes
        assert streamed.status_code == 413
        assert error_code(streamed) == "PAYLOAD_TOO_LARGE"
        assert (await http.post("/", content=b"x" * 1000)).status_code == 200


# -- recycling ---------------------------------------------------------------------------


async def test_a_worker_is_recycled_after_max_requests_without_a_pause(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo", max_requests=3)
    pids: list[int] = []
    slowest = 0.0
    async with client(pool, echo) as http:
        while len(set(pids)) < 3:  # two recycles
            assert len(pids) < 2000
            started = time.monotonic()
            pids.append((await http.get("/")).json()["pid"])
            slowest = max(slowest, time.monotonic() - started) if len(pids) > 1 else 0
    first, second, third = dict.fromkeys(pids)
    assert pids.count(first) >= 3 and pids.count(second) >= 3
    assert pids == sorted(pids, key=[first, second, third].index)  # never back to an old one
    # The successor starts while the worn-out worker serves on: no request waits for it,
    # so none takes as long as a successor's start (measured in the same run: on a busy
    # machine both grow).
    successors = pool.spawned[1:3]  # type: ignore[attr-defined]
    starts = [worker.ready_at - worker.started for worker in successors]
    assert slowest < min(starts), (slowest, starts)
    old, newest = spawned(pool)[:2], spawned(pool)[2]
    await until(lambda: [s["pid"] for s in pool.stats()] == [newest])
    assert not any(alive(pid) for pid in old)


async def test_ttl_zero_runs_every_request_in_a_fresh_process(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo", ttl=0)
    async with client(pool, echo) as http:
        answers = await asyncio.gather(*(http.get("/") for _ in range(3)))
        pids = [answer.json()["pid"] for answer in answers]
        pids.append((await http.get("/")).json()["pid"])
    assert len(set(pids)) == 4
    await until(lambda: pool.stats() == [] and not any(alive(pid) for pid in spawned(pool)))


async def test_a_worker_older_than_its_ttl_is_recycled(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo", ttl=0.5)
    async with client(pool, echo) as http:
        first = (await http.get("/")).json()["pid"]
        await asyncio.sleep(0.6)
        second = (await http.get("/")).json()["pid"]
    assert second != first
    await until(lambda: not alive(spawned(pool)[0]))


async def test_an_idle_worker_is_stopped(apps, make_pool):
    pool = make_pool()
    echo = make_app(apps, "echo", idle_timeout=0.3)
    async with client(pool, echo) as http:
        await http.get("/")
    (pid,) = spawned(pool)
    await until(lambda: pool.stats() == [] and not alive(pid), timeout=3)


async def test_stop_app_lets_in_flight_requests_finish(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty")
    async with client(pool, faulty) as http:
        pid = (await http.get("/pid")).json()["pid"]
        pending = asyncio.create_task(http.get("/wait", params={"s": "0.5"}))
        await asyncio.sleep(0.2)
        await pool.stop_app(faulty.key)
        answer = await pending
    assert answer.status_code == 200
    assert answer.json()["pid"] == pid
    assert not any(alive(pid) for pid in spawned(pool))


# -- busy apps ---------------------------------------------------------------------------


async def test_a_busy_app_gets_more_workers_up_to_its_processes(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty", processes=2)
    async with client(pool, faulty) as http:
        assert (await http.get("/wait", params={"s": "0"})).status_code == 200
        waits = [http.get("/wait", params={"s": "1"}) for _ in range(BUSY * 3)]
        answers = await asyncio.gather(*waits)
        # All of them go to the first worker; from the BUSY-th on, a second one starts
        # (no request waits for it), for the requests that come after.
        assert all(answer.status_code == 200 for answer in answers)
        assert len(spawned(pool)) == 2  # processes=2: no third
        await until(lambda: [s["state"] for s in pool.stats()] == ["ready"] * 2, timeout=30)
        more = await asyncio.gather(*(http.get("/wait", params={"s": "0.3"}) for _ in range(8)))
        served_by = {answer.json()["pid"] for answer in more}
        assert len(served_by) == 2  # the least busy takes each request


async def test_a_busy_app_takes_no_room_from_the_others(apps, make_pool):
    pool = make_pool(max_workers=1)
    faulty = make_app(apps, "faulty", processes=2)
    async with client(pool, faulty) as http:
        waits = [http.get("/wait", params={"s": "0.5"}) for _ in range(BUSY * 2)]
        assert all(answer.status_code == 200 for answer in await asyncio.gather(*waits))
    assert len(spawned(pool)) == 1


async def test_a_busy_app_gives_a_worker_back_when_another_app_needs_room(apps, make_pool):
    pool = make_pool(max_workers=2)
    faulty, echo = make_app(apps, "faulty", processes=2), make_app(apps, "echo")
    async with client(pool, faulty) as busy, client(pool, echo) as other:
        assert (await busy.get("/wait", params={"s": "0"})).status_code == 200
        first = [busy.get("/wait", params={"s": "0.5"}) for _ in range(BUSY + 1)]
        await asyncio.gather(*first)  # the second worker starts meanwhile
        await until(lambda: [s["state"] for s in pool.stats()] == ["ready"] * 2, timeout=30)
        load = [asyncio.create_task(busy.get("/wait", params={"s": "1"})) for _ in range(8)]
        await until(lambda: all(s["active"] for s in pool.stats()))  # both busy: no room
        answer = await other.get("/")  # one of the two retires after its requests
        assert answer.status_code == 200, answer.text
        assert all(answer.status_code == 200 for answer in await asyncio.gather(*load))
    assert sorted(s["key"] for s in pool.stats()) == [echo.key, faulty.key]


async def test_a_quiet_app_keeps_one_worker(apps, make_pool):
    pool = make_pool()
    faulty = make_app(apps, "faulty", processes=4)
    async with client(pool, faulty) as http:
        answers = await asyncio.gather(
            *(http.get("/wait", params={"s": "0.2"}) for _ in range(BUSY))
        )
        assert len({answer.json()["pid"] for answer in answers}) == 1
        for _ in range(5):
            await http.get("/wait", params={"s": "0"})
    assert len(spawned(pool)) == 1


async def test_processes_default_to_the_usable_cores():
    assert processes(AppSettings()) == len(os.sched_getaffinity(0))
    assert processes(AppSettings(processes=3)) == 3


# -- the pool-wide cap -------------------------------------------------------------------


async def test_max_workers_evicts_the_least_recently_used_idle_worker(apps, make_pool):
    pool = make_pool(max_workers=2)
    a, b, c = (make_app(apps, "echo", key=f"echo-{n}@1.0.0") for n in "abc")
    for app in (a, b, a, c):
        async with client(pool, app) as http:
            await http.get("/")
    await until(lambda: sorted(s["key"] for s in pool.stats()) == [a.key, c.key])
    assert not alive(*spawned(pool, b.key))
    assert alive(*spawned(pool, a.key)) and alive(*spawned(pool, c.key))


async def test_when_every_worker_is_busy_a_request_waits_then_gets_503(apps, make_pool):
    pool = make_pool(max_workers=1, queue_timeout=0.3)
    faulty = make_app(apps, "faulty")
    echo = make_app(apps, "echo")
    async with client(pool, faulty) as slow_http, client(pool, echo) as http:
        await slow_http.get("/pid")
        slow = asyncio.create_task(slow_http.get("/wait", params={"s": "1.5"}))
        await asyncio.sleep(0.2)
        refused = await http.get("/")
        assert refused.status_code == 503
        assert error_code(refused) == "APP_BUSY"
        assert refused.headers["retry-after"] == "1"
        pool.queue_timeout = 5.0
        waited = await http.get("/")  # served once the busy worker is idle and evicted
        assert waited.status_code == 200
        assert (await slow).status_code == 200


# -- shutting down -----------------------------------------------------------------------


async def test_close_leaves_no_process_alive(apps, make_pool):
    pool = make_pool(grace=0.5)
    echo = make_app(apps, "echo")
    faulty = make_app(apps, "faulty")
    async with client(pool, echo) as http:
        await http.get("/")
    async with client(pool, faulty) as http:
        (await http.get("/spawn")).json()
        blocked = asyncio.create_task(http.get("/block"))  # ignores SIGTERM: needs SIGKILL
        await asyncio.sleep(0.3)
        (faulty_pid,) = spawned(pool, faulty.key)
        children = descendants(faulty_pid)
        assert children  # the `sleep` it started
        started = time.monotonic()
        await pool.close()
        assert time.monotonic() - started < 3
        answer = await blocked
    assert answer.status_code == 502
    for pid in (*spawned(pool), *children):
        await until(lambda pid=pid: not alive(pid), timeout=2)
    assert pool.stats() == []
    async with client(pool, echo) as http:
        assert error_code(await http.get("/")) == "NOT_READY"


# -- through a real server: streaming, WebSocket, broken connections ---------------------


async def test_a_50_mib_download_streams_through_bounded_memory(apps, make_pool):
    pool = make_pool()
    async with (
        real_server(pool, apps) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        warm = await http.get("/stream/download", params={"mib": "2"})  # worker, buffers
        assert warm.content == APP_CHUNK * 2
        baseline = peak = rss()
        digest = hashlib.sha256()
        size = 0
        async with http.stream("GET", "/stream/download", params={"mib": "50"}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-length"] == str(50 * MIB)
            async for chunk in answer.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
                peak = max(peak, rss())
    expected = hashlib.sha256()
    for _ in range(50):
        expected.update(APP_CHUNK)
    assert size == 50 * MIB
    assert digest.hexdigest() == expected.hexdigest()
    growth = peak - baseline
    print(f"\nRSS growth while downloading 50 MiB: {growth / MIB:.1f} MiB")
    assert growth < 16 * MIB


async def test_a_20_mib_upload_streams_to_the_app(apps, make_pool):
    pool = make_pool()
    block = os.urandom(MIB)
    expected = hashlib.sha256()
    for n in range(20):
        expected.update(bytes([n]) + block[1:])
    peak = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for n in range(20):
            peak = max(peak, rss())
            yield bytes([n]) + block[1:]

    async with (
        real_server(pool, apps, max_body_size=32 * MIB) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        await http.post("/stream/upload", content=b"warm-up")
        baseline = rss()
        answer = await http.post("/stream/upload", content=body())
    assert answer.status_code == 200
    assert answer.json() == {"sha256": expected.hexdigest(), "size": 20 * MIB}
    print(f"\nRSS growth while uploading 20 MiB: {(peak - baseline) / MIB:.1f} MiB")
    assert peak - baseline < 16 * MIB


async def test_a_crash_after_the_response_started_drops_the_connection(apps, make_pool):
    pool = make_pool()
    async with (
        real_server(pool, apps) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/faulty/crash-midway")
        assert (await http.get("/faulty/pid")).status_code == 200


async def test_a_response_unfinished_at_the_timeout_is_cut_and_its_worker_recycled(apps, make_pool):
    pool = make_pool()
    async with (
        real_server(pool, apps, timeout=1.0) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        await http.get("/stream/download", params={"mib": "1"})
        (first,) = [s["pid"] for s in pool.stats() if s["key"] == "stream@1.0.0"]
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", "/stream/download", params={"mib": "500"}) as answer:
                assert answer.status_code == 200
                chunks = answer.aiter_raw()
                await anext(chunks)
                await asyncio.sleep(1.5)  # a slow client: backpressure reaches the worker
                async for _ in chunks:
                    pass
        await until(lambda: not alive(first))
        again = await http.get("/stream/download", params={"mib": "1"})
        assert again.status_code == 200
        assert [s["pid"] for s in pool.stats()] != [first]


async def test_websocket_messages_and_close_codes_pass_both_ways(apps, make_pool):
    pool = make_pool()
    async with real_server(pool, apps) as port:
        ws, accepted = await WebSocketClient.connect(port, "/echo/ws", ["chat.v1"])
        assert isinstance(accepted, ws_events.AcceptConnection)
        assert accepted.subprotocol == "chat.v1"
        assert (b"x-echo", b"ws") in accepted.extra_headers
        await ws.send(ws_events.TextMessage(data="hello"))
        assert (await ws.next()).data == "echo: hello"
        payload = os.urandom(200_000)
        await ws.send(ws_events.BytesMessage(data=payload))
        received = b""
        while len(received) < len(payload):
            received += (await ws.next()).data
        assert received == payload
        await ws.send(ws_events.TextMessage(data="close:4001"))  # the app closes
        closing = await ws.next()
        assert isinstance(closing, ws_events.CloseConnection)
        assert (closing.code, closing.reason) == (4001, "asked to")
        ws.close()

        ws, _ = await WebSocketClient.connect(port, "/echo/ws")
        await ws.send(ws_events.CloseConnection(code=4002, reason="client leaves"))
        assert isinstance(await ws.next(), ws_events.CloseConnection)
        ws.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            last = {}
            for _ in range(50):
                last = (await http.get("/echo/last-close")).json()
                if last:
                    break
                await asyncio.sleep(0.02)
        # The app learns that the client left. Hypercorn (0.18) reports any close the
        # client starts as 1006 to its ASGI app, in the runtime and in the worker alike,
        # so a client's own code cannot reach the app; the app's codes reach the client.
        assert last.get("code") in (1000, 1006)


async def test_a_websocket_the_app_refuses_is_refused(apps, make_pool):
    pool = make_pool()
    async with real_server(pool, apps) as port:
        ws, answer = await WebSocketClient.connect(port, "/echo/reject")
        ws.close()
    assert isinstance(answer, ws_events.RejectConnection)
    assert answer.status_code == 403


async def test_a_websocket_to_an_app_that_cannot_start_gets_the_error(apps, make_pool):
    pool = make_pool()
    async with real_server(pool, apps) as port:
        # Hypercorn offers the websocket.http.response extension: the refusal is JSON.
        ws, answer = await WebSocketClient.connect(port, "/broken/ws")
        body = b""
        while True:
            event = await ws.next()
            if isinstance(event, ws_events.RejectData):
                body += event.data
                if event.body_finished:
                    break
        ws.close()
    assert isinstance(answer, ws_events.RejectConnection)
    assert answer.status_code == 502
    assert b"APP_START_FAILED" in body


def test_app_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AppSettings(timeout=0)
    with pytest.raises(ValueError, match="max_requests"):
        AppSettings(max_requests=0)
    with pytest.raises(ValueError, match="env"):
        AppSettings(env={"A=B": "x"})
    with pytest.raises(ValueError, match="module:attr"):
        WorkerApp("x@1", Path("/"), "no-colon")
    assert AppSettings().max_memory_mb == 1024
    assert AppSettings(public_routes=("/health",)).public_routes == ("/health",)
    assert hash(AppSettings(env={"A": "1"})) == hash(AppSettings(env={"A": "2"}))


LIFESPAN_APP = """
import asyncio
import os
from pathlib import Path

DATA = Path(os.environ["COURTYARD_APP_DATA"])
state = {"startups": 0, "served": 0}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            state["startups"] += 1
            await send({"type": "lifespan.startup.complete"})
        (DATA / "shutdown").write_text(str(state["served"]))
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.5)
    state["served"] += 1
    body = str(state["startups"]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


async def test_the_lifespan_runs_once_and_ends_after_the_requests_in_flight(tmp_path, make_pool):
    """The worker runs the app's lifespan itself (its two servers share one): started
    before the first request, ended on SIGTERM only once the requests in flight are done."""
    root = tmp_path / "apps" / "life" / "1.0.0"
    root.mkdir(parents=True)
    (root / "life_app.py").write_text(LIFESPAN_APP)
    pool = make_pool()
    life = make_app(tmp_path / "apps", "life")
    async with client(pool, life) as http:
        assert (await http.get("/")).text == "1"
        slow = asyncio.create_task(http.get("/slow"))
        await asyncio.sleep(0.2)  # in flight
        await pool.close()  # SIGTERM to the worker
        answer = await slow
    assert (answer.status_code, answer.text) == (200, "1")
    assert (tmp_path / "app-data" / "life" / "shutdown").read_text() == "2"
