"""`courtyard serve --workers N`: several server processes on one address, their
supervisor (servers/supervisor.py) and the event hub between them
(services/events_hub.py). See docs/configuration.md and docs/performance.md.

The hub and the buses first, in this process (fast); then real supervisors on loopback
ports, each test with its own (slow: two server processes start).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps_kit import descendants
from courtyard.servers.binding import hold_address, shared_socket
from courtyard.servers.hub import Hub
from courtyard.servers.supervisor import Supervisor, worker_count
from courtyard.services import make_event_bus
from courtyard.services.events import MemoryEventBus
from courtyard.services.events_hub import HubEventBus, use_hub
from courtyard.settings import Settings
from courtyard.testing import Server
from courtyard_sdk.events import MAX_EVENT_BYTES, parse_event_id
from courtyard_sdk.services import EventBusUnavailable, SubscriptionLagged
from servers import serve_on_taken_port
from test_events import INTERNAL, SSE, nothing_more, take

FIXTURES = Path(__file__).parents[1] / "fixtures" / "apps"

# The hub and the buses, in one process ---------------------------------------------------


@asynccontextmanager
async def hub_with(count: int, history: int = 1000) -> AsyncIterator[tuple[Hub, list[HubEventBus]]]:
    """A hub and `count` hub buses on it, as N server processes would have them."""
    stuck: list[int] = []
    hub = Hub(history, stuck.append)
    buses: list[HubEventBus] = []
    try:
        for index in range(count):
            buses.append(await attach(hub, index, history))
        yield hub, buses
    finally:
        for bus in buses:
            await bus.close()
        hub.close()


async def attach(hub: Hub, index: int, history: int = 1000) -> HubEventBus:
    mine, its = socket.socketpair()
    await hub.attach(index, mine)
    bus = HubEventBus(its.detach(), history)
    await bus.start()
    return bus


async def test_every_process_sees_every_event_with_the_same_ids():
    async with (
        hub_with(2) as (_, (one, two)),
        one.subscribe("notes.*") as on_one,
        two.subscribe("notes.*") as on_two,
    ):
        first = await one.publish("notes.added", {"n": 1})
        second = await two.publish("notes.added", {"n": 2}, tenant="acme")
        await two.publish("other.topic", 3)
        seen_one, seen_two = await take(on_one, 2), await take(on_two, 2)
        assert seen_one == seen_two == [first, second]
        assert second.tenant == "acme" and second.data == {"n": 2}
        assert parse_event_id(first.id) < parse_event_id(second.id)
        assert await nothing_more(on_one) and await nothing_more(on_two)


async def test_ids_increase_across_processes_under_concurrency():
    async with hub_with(3) as (_, buses):
        async with buses[0].subscribe("*") as everything:
            published = await asyncio.gather(
                *(bus.publish("n.x", i) for i in range(30) for bus in buses)
            )
            seen = await take(everything, len(published))
        keys = [parse_event_id(event.id) for event in seen]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert {e.id for e in seen} == {e.id for e in published}


async def test_the_largest_event_passes_the_hub():
    async with hub_with(2) as (_, (one, two)), two.subscribe("big.*") as on_two:
        data = "é" * (MAX_EVENT_BYTES // 2 - 10)  # two bytes each in UTF-8: just under 1 MiB
        sent = await one.publish("big.one", data)
        assert await take(on_two, 1) == [sent] and sent.data == data


async def test_a_process_started_later_resumes_from_what_the_hub_holds():
    async with hub_with(1, history=3) as (hub, (one,)):
        ids = [(await one.publish("n.x", i)).id for i in range(5)]
        late = await attach(hub, 1, history=3)
        try:
            # Held: the last three; a resume from the third misses nothing.
            async with late.subscribe("n.*", last_event_id=ids[1]) as resumed:
                assert not resumed.gap
                assert [e.id for e in await take(resumed, 3)] == ids[2:]
            async with late.subscribe("n.*", last_event_id=ids[0]) as older:
                assert older.gap  # ids[1] left the history
            # Live events reach it too, with the ids every process gives them.
            async with late.subscribe("n.*") as live:
                sent = await one.publish("n.x", "late")
                assert await take(live, 1) == [sent]
        finally:
            await late.close()


async def test_a_lost_hub_refuses_rather_than_diverges():
    async with hub_with(2) as (hub, (one, _)):
        async with one.subscribe("n.*") as subscription:
            hub.close()  # the supervisor is gone
            with pytest.raises(SubscriptionLagged):
                await take(subscription, 1)
        for _ in range(100):
            if one.broken is not None:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(EventBusUnavailable, match="event hub"):
            await one.ping()  # /api/health/ready: 503
        with pytest.raises(EventBusUnavailable):
            await one.publish("n.x", 1)
        with pytest.raises(EventBusUnavailable):
            async with one.subscribe("n.*"):
                pass


def test_the_bus_of_a_process_with_a_hub(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert type(make_event_bus(settings)) is MemoryEventBus
    mine, its = socket.socketpair()
    try:
        use_hub(its.fileno())
        assert isinstance(make_event_bus(settings), HubEventBus)
    finally:
        use_hub(None)
        mine.close()
        its.close()


@pytest.mark.parametrize(
    ("host", "workers", "expected"),
    [
        ("127.0.0.1", 0, 1),  # a developer's machine
        ("localhost", 0, 1),
        ("::1", 0, 1),
        ("0.0.0.0", 0, len(os.sched_getaffinity(0))),  # production: every core
        ("0.0.0.0", 3, 3),
        ("127.0.0.1", 2, 2),
    ],
)
def test_the_number_of_processes(host, workers, expected):
    assert worker_count(Settings(host=host, workers=workers)) == expected


def test_each_process_is_an_instance_of_its_own():
    named = Supervisor(Settings(instance_id="edge-1"), 2)
    assert [named._settings_of(i).instance_id for i in (0, 1)] == ["edge-1-w0", "edge-1-w1"]
    assert Supervisor(Settings(), 2)._settings_of(1).instance_id is None  # <hostname>-<pid>


def test_a_held_address_refuses_anyone_else_but_shares_with_the_processes():
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):  # even a SO_REUSEPORT listener
            hold_address("127.0.0.1", taken.getsockname()[1]).close()
    with hold_address("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with shared_socket("127.0.0.1", port) as one, shared_socket("127.0.0.1", port) as two:
            one.listen()
            two.listen()
            with pytest.raises(OSError, match="in use"):
                hold_address("127.0.0.1", port).close()  # a second supervisor


# Real supervisors ---------------------------------------------------------------------


def wait_for_log(server: Server, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert server.process.poll() is None, server.log
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{server.log}"
        time.sleep(0.05)


def serving_pids(url: str, want: int = 2, tries: int = 200) -> set[int]:
    """The pids answering /workers/pid on new connections, until `want` differ."""
    pids: set[int] = set()
    for _ in range(tries):
        try:
            answer = httpx.get(f"{url}/workers/pid", timeout=5)
        except httpx.TransportError:
            time.sleep(0.05)  # a process that just died
            continue
        if answer.status_code == 200:
            pids.add(answer.json()["pid"])
        else:  # a new process, listening while its first generation builds
            assert answer.json()["error"]["code"] == "NOT_READY", answer.text
        if len(pids) >= want:
            break
    return pids


@pytest.fixture
def workers_server(
    courtyard_server: Callable[..., Server], add_fixture_plugins: Callable[..., None]
) -> Callable[..., Server]:
    """`courtyard serve` with two processes and the `workers` fixture plugin, once both
    processes serve."""
    add_fixture_plugins("workers")

    def start(**settings: Any) -> Server:
        server = courtyard_server(workers=2, entry_points=False, **settings)
        wait_for_log(server, "with 2 worker processes")
        return server

    return start


@pytest.mark.parametrize(
    "server_name", ["granian", pytest.param("hypercorn", marks=pytest.mark.slow)]
)
def test_two_processes_answer_then_stop_on_sigterm(workers_server, server_name):
    server = workers_server(server=server_name)
    pids = serving_pids(server.url)
    assert len(pids) == 2 and server.process.pid not in pids, pids
    served_by = httpx.get(f"{server.url}/api/health/live").headers.get("server", "")
    assert served_by.startswith(server_name), served_by
    assert "worker 0 courtyard.server" in server.log
    assert "worker 1 courtyard.server" in server.log
    loaded = {json.dumps(httpx.get(f"{server.url}/api/plugins/loaded").json()) for _ in range(6)}
    assert len(loaded) == 1, loaded
    assert server.stop() == 0, server.log
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), server.log


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return False


def app_workers(server: Server) -> list[int]:
    """The app workers' processes under the supervisor (the sandboxes' too)."""
    return [
        pid
        for pid in descendants(server.process.pid)
        if "worker_main.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    ]


def test_an_app_runs_once_for_all_the_processes(workers_server, tmp_path):
    shutil.copytree(FIXTURES / "echo", tmp_path / "apps" / "echo")
    server = workers_server()
    # A new connection each time: the kernel spreads them over the two processes.
    seen = {httpx.get(f"{server.url}/echo/hi", timeout=30).json()["pid"] for _ in range(30)}
    assert len(seen) == 1, seen
    assert app_workers(server) and all(
        pid not in descendants(process)
        for pid in app_workers(server)
        for process in serving_pids(server.url)
    )  # the supervisor's children, not a server process's


@pytest.mark.slow
def test_app_workers_outlive_a_process_that_dies_and_stop_with_their_app(workers_server, tmp_path):
    shutil.copytree(FIXTURES / "echo", tmp_path / "apps" / "echo")
    server = workers_server()
    before = httpx.get(f"{server.url}/echo/hi", timeout=30).json()["pid"]
    os.kill(min(serving_pids(server.url)), signal.SIGKILL)
    wait_for_log(server, "stopped unexpectedly (killed by SIGKILL)")
    assert len(serving_pids(server.url)) == 2  # the replacement serves
    seen = {httpx.get(f"{server.url}/echo/hi", timeout=30).json()["pid"] for _ in range(10)}
    assert seen == {before}
    removed = httpx.delete(f"{server.url}/api/apps/_/echo/1.0.0", headers=INTERNAL, timeout=60)
    assert removed.status_code == 200, removed.text
    deadline = time.monotonic() + 30
    while app_workers(server):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert server.stop() == 0, server.log


@pytest.mark.slow
def test_a_killed_process_is_replaced(workers_server):
    server = workers_server()
    first = serving_pids(server.url)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for_log(server, "stopped unexpectedly (killed by SIGKILL)")
    deadline = time.monotonic() + 60
    while True:
        now = serving_pids(server.url)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, (now, server.log)
        time.sleep(0.2)
    assert len(now - first) == 1
    assert server.stop() == 0, server.log


@pytest.mark.slow
@pytest.mark.parametrize("bus", ["memory", "redis"])
async def test_a_stream_on_one_process_sees_events_published_on_the_other(
    workers_server, request, bus
):
    redis = request.getfixturevalue("redis") if bus == "redis" else None
    server = workers_server(event_bus=bus, redis_url=redis.url if redis else None)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as streamer,
        streamer.stream("GET", "/api/stream?topics=workers.*") as response,
    ):
        assert response.status_code == 200, await response.aread()
        stream = SSE(response)
        await stream.comment("open")
        published: dict[str, int] = {}  # id -> publishing pid
        for i in range(40):
            # A new connection each time: the kernel spreads them over the processes.
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                answer = await client.post("/workers/publish", json={"data": i})
            assert answer.status_code == 200, answer.text
            published[answer.json()["id"]] = answer.json()["pid"]
            if len(set(published.values())) == 2 and i >= 3:
                break
        assert len(set(published.values())) == 2, published
        seen = [(await stream.next())["id"] for _ in published]
        assert seen == list(published)  # every event, in order, with the publisher's ids


@pytest.mark.slow
def test_no_process_outlives_its_supervisor(workers_server, tmp_path):
    shutil.copytree(FIXTURES / "echo", tmp_path / "apps" / "echo")
    server = workers_server()
    assert httpx.get(f"{server.url}/echo/hi", timeout=30).status_code == 200
    pids = serving_pids(server.url) | set(app_workers(server))
    server.process.kill()  # no chance to stop them: they stop by themselves
    server.process.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)


@pytest.mark.slow
def test_a_process_that_cannot_start_stops_all(workers_server, plugin_dir):
    (plugin_dir / "broken").mkdir()
    (plugin_dir / "broken" / "plugin.toml").write_text('name = "broken"\nmodule = "nope"\n')
    with pytest.raises(RuntimeError, match="exited early") as failed:
        workers_server(strict=True)
    assert "Error: " in str(failed.value)
    assert "broken" in str(failed.value)


@pytest.mark.slow
def test_an_address_in_use_refuses_the_start(tmp_path):
    # A server sharing its port with SO_REUSEPORT (as granian's does) holds it too.
    done = serve_on_taken_port(tmp_path, "--workers", "2", reuse_port=True)
    port = done.args[done.args.index("--port") + 1]
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot serve on http://127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr
    assert "worker 0" not in done.stderr  # no process started
