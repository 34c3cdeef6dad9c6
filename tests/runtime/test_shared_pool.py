"""The supervisor's pool of app workers, borrowed by the server processes
(apps/shared_pool.py): here a `PoolHost` and its `SharedPool`s in one process, on
socketpairs as the supervisor and its processes have them, with real workers.
tests/runtime/test_serve_workers.py runs the same through `courtyard serve --workers 2`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto.events as ws_events
from apps_kit import alive, client, make_app, real_server, until
from courtyard.apps.pool import WorkerPool
from courtyard.apps.shared_pool import PoolHost, SharedPool
from ws_client import WebSocketClient


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[PoolHost]:
    pool = WorkerPool(tmp_path / "run", grace=1.0, allow_unsandboxed=shutil.which("bwrap") is None)
    host = PoolHost(pool)
    yield host
    await host.close()
    assert pool.stats() == []


@pytest.fixture
async def borrower(host: PoolHost) -> AsyncIterator[Callable[[], Any]]:
    """`await borrower()`: a server process's `SharedPool` on the host."""
    made: list[SharedPool] = []

    async def make() -> SharedPool:
        mine, its = socket.socketpair()
        await host.attach(mine)
        shared = SharedPool(its.detach())
        made.append(shared)
        return shared

    yield make
    for shared in made:
        await shared.close()


async def test_every_process_is_served_by_the_same_worker(apps, host, borrower):
    echo = make_app(apps, "echo")
    one, two = await borrower(), await borrower()
    seen = set()
    async with client(one, echo) as first, client(two, echo) as second:
        for http in (first, second, first, second):
            answer = await http.get("/hello", headers={"X-Forwarded-For": "203.0.113.9"})
            assert answer.status_code == 200, answer.text
            seen.add(answer.json()["pid"])
            forwarded = answer.json()["headers"]["x-forwarded-for"]
            assert forwarded == ["203.0.113.9, 127.0.0.1"]  # as from a pool of its own
    assert len(seen) == 1
    await two.workers()  # each gives back the workers it keeps for its next requests
    (worker,) = await one.workers()
    assert worker["requests"] == 4 and worker["active"] == 0
    assert [w["pid"] for w in await two.workers()] == [worker["pid"]]  # (ages move on)


async def test_what_a_dead_process_borrowed_is_given_back(apps, host, borrower):
    slow = make_app(apps, "echo", max_requests=1000)
    shared = await borrower()
    worker = await shared.lend(slow)  # borrowed, never given back: the process dies
    assert (await shared.workers())[0]["active"] == 1
    await shared.close()
    await until(lambda: host.pool.stats()[0]["active"] == 0)
    assert alive(worker.pid)  # the worker serves the other processes on


async def test_a_worker_lent_to_a_request_that_gave_up_is_given_back(apps, host, borrower):
    echo = make_app(apps, "echo")
    shared = await borrower()
    asking = asyncio.create_task(shared.lend(echo))  # its worker starts: it takes a while
    await until(lambda: host.pool.stats() != [])
    asking.cancel()  # the client left
    await until(lambda: host.pool.stats()[0]["state"] == "ready", timeout=30)
    await until(lambda: host.pool.stats()[0]["active"] == 0)


async def test_refusals_and_stops_cross_the_wire(apps, host, borrower):
    broken = make_app(apps, "broken")
    shared = await borrower()
    async with client(shared, broken) as http:
        answer = await http.get("/")
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "APP_START_FAILED"
    echo = make_app(apps, "echo")
    async with client(shared, echo) as http:
        assert (await http.get("/")).status_code == 200
    (worker,) = await shared.workers()
    await shared.stop_app(echo.key)
    assert await shared.workers() == [] and not alive(worker["pid"])


async def test_a_process_whose_supervisor_is_gone_answers_not_ready(apps, tmp_path):
    mine, its = socket.socketpair()
    shared = SharedPool(its.detach())
    mine.close()
    async with client(shared, make_app(apps, "echo")) as http:
        answer = await http.get("/")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "NOT_READY"
    await shared.close()


async def test_a_fault_of_the_supervisor_fails_the_request_instead_of_hanging(
    apps, host, borrower, monkeypatch
):
    async def full_disk(app: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(host.pool, "lend", full_disk)
    shared = await borrower()
    with pytest.raises(RuntimeError, match="No space left on device"):
        await shared.lend(make_app(apps, "echo"))


async def test_a_process_reuses_the_worker_it_was_just_lent(apps, host, borrower, monkeypatch):
    lent = []
    lend = host.pool.lend

    async def counted(app: Any) -> Any:
        lent.append(app.key)
        return await lend(app)

    monkeypatch.setattr(host.pool, "lend", counted)
    shared = await borrower()
    async with client(shared, make_app(apps, "echo")) as http:
        for _ in range(10):
            assert (await http.get("/")).status_code == 200
    assert len(lent) < 10  # kept between requests, not asked for each
    (worker,) = await shared.workers()
    assert worker["requests"] == 10 and worker["active"] == 0  # yet each one counted
    fresh = make_app(apps, "echo", key="fresh@1.0.0", ttl=0)
    async with client(shared, fresh) as http:
        pids = {(await http.get("/")).json()["pid"] for _ in range(3)}
    assert len(pids) == 3  # ttl = 0: a process per request, none kept


async def test_websockets_and_streams_pass_through_a_borrowed_worker(apps, borrower):
    shared = await borrower()
    async with real_server(shared, apps) as port:
        ws, accepted = await WebSocketClient.connect(port, "/echo/ws", ["chat.v1"])
        assert isinstance(accepted, ws_events.AcceptConnection)
        await ws.send(ws_events.TextMessage(data="hello"))
        assert (await ws.next()).data == "echo: hello"
        await ws.send(ws_events.TextMessage(data="close:4001"))  # the app closes
        closing = await ws.next()
        assert isinstance(closing, ws_events.CloseConnection) and closing.code == 4001
        ws.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            download = await http.get("/stream/download", params={"mib": "3"})
            assert len(download.content) == 3 * 1024 * 1024
            with pytest.raises(httpx.RemoteProtocolError):  # a crash once the answer started
                await http.get("/faulty/crash-midway")
            assert (await http.get("/faulty/pid")).status_code == 200  # a fresh worker


async def test_workers_recycle_under_sustained_load_through_a_borrower(apps, borrower):
    shared = await borrower()
    echo = make_app(apps, "echo", max_requests=20, processes=1)
    pids: list[str] = []
    async with client(shared, echo) as http:

        async def keep_asking() -> None:  # eight at once: never a quiet moment
            while len(set(pids)) < 3 and len(pids) < 3000:
                pids.append((await http.get("/")).json()["pid"])

        await asyncio.gather(*(keep_asking() for _ in range(8)))
    assert len(set(pids)) >= 3, len(pids)  # 20 a worker: the supervisor kept recycling
