"""No process an app starts outlives its worker, and no app process can hang the runtime.

The `faulty` fixture app's `/detach` starts two processes that leave the worker's process
group: one in a new session that keeps the worker's output pipe open, and one through a
double fork. Each test runs sandboxed (bwrap's PID namespace) and unsandboxed (the worker
as a child subreaper), and checks with /proc that nothing is left.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps_kit import alive, client, descendants, make_app, spawned, until
from courtyard.apps.pool import WorkerPool

FIXTURES = Path(__file__).parents[1] / "fixtures" / "apps"

MODES = [
    pytest.param({"bwrap": "courtyard-no-such-bwrap", "allow_unsandboxed": True}, id="unsandboxed"),
    pytest.param(
        {},
        id="sandboxed",
        marks=pytest.mark.skipif(
            shutil.which("bwrap") is None, reason="needs bwrap (Debian package bubblewrap)"
        ),
    ),
]


@pytest.fixture
async def pool(tmp_path: Path, request: pytest.FixtureRequest):
    options: dict[str, Any] = {"grace": 0.5, **request.param}
    made = WorkerPool(tmp_path / "run", **options)
    record: list[Any] = []
    start = made._spawn

    def spawn(app: Any) -> Any:
        record.append(start(app))
        return record[-1]

    made._spawn = spawn  # type: ignore[method-assign]
    made.spawned = record  # type: ignore[attr-defined]
    yield made
    await made.close()


async def detached(pool: WorkerPool, app: Any) -> tuple[int, list[int]]:
    """Have the app detach its two processes; the worker's pid and what it started."""
    async with client(pool, app) as http:
        assert (await http.get("/detach")).status_code == 200
    (pid,) = spawned(pool, app.key)
    await until(lambda: len(descendants(pid)) >= 2)
    return pid, descendants(pid)


@pytest.mark.parametrize("pool", MODES, indirect=True)
async def test_stopping_a_worker_ends_what_its_app_detached(apps, pool):
    faulty = make_app(apps, "faulty")
    pid, started = await detached(pool, faulty)
    begun = time.monotonic()
    await asyncio.wait_for(pool.stop_app(faulty.key), 5)
    assert time.monotonic() - begun < 3  # the pipe the detached process holds is not waited on
    for each in (pid, *started):
        await until(lambda each=each: not alive(each), timeout=3)


@pytest.mark.parametrize("pool", MODES, indirect=True)
async def test_a_worker_killed_outright_takes_its_detached_processes(apps, pool):
    faulty = make_app(apps, "faulty")
    pid, started = await detached(pool, faulty)
    async with client(pool, faulty) as http:
        blocked = asyncio.create_task(http.get("/block"))  # ignores SIGTERM: needs SIGKILL
        await asyncio.sleep(0.2)
        await asyncio.wait_for(pool.close(), 5)
        assert (await blocked).status_code == 502
    for each in (pid, *started):
        await until(lambda each=each: not alive(each), timeout=3)


@pytest.mark.parametrize("pool", MODES, indirect=True)
async def test_a_worker_over_its_memory_is_recycled_even_if_the_app_survives(apps, pool, caplog):
    faulty = make_app(apps, "faulty", max_memory_mb=128)
    async with client(pool, faulty) as http:
        first = (await http.get("/retain", params={"mb": 160})).json()["pid"]
        await until(lambda: not pool.stats() or pool.stats()[0]["state"] != "ready", timeout=5)
        after = (await http.get("/pid")).json()["pid"]
    assert after != first
    assert "over its max_memory_mb (128): recycling it" in caplog.text


@pytest.mark.parametrize("sandboxed", [False, True], ids=["unsandboxed", "sandboxed"])
@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_what_apps_started_dies_with_a_killed_runtime(courtyard_server, tmp_path, sandboxed):
    if sandboxed and shutil.which("bwrap") is None:
        pytest.skip("needs bwrap (Debian package bubblewrap)")
    shutil.copytree(FIXTURES / "faulty", tmp_path / "apps" / "faulty")
    env: dict[str, str] = {}
    if not sandboxed:  # a PATH without bwrap, with what the app runs
        tools = tmp_path / "bin"
        tools.mkdir()
        for tool in ("sleep", "sh", "setsid"):
            (tools / tool).symlink_to(shutil.which(tool) or tool)
        env["PATH"] = str(tools)
    server = courtyard_server(entry_points=False, apps_allow_unsandboxed=not sandboxed, env=env)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        answer = await http.get("/faulty/detach")
    assert answer.status_code == 200, answer.text
    await until(lambda: len(descendants(server.process.pid)) >= 3)  # the worker, 2 sleeps
    everything = descendants(server.process.pid)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    deadline = time.monotonic() + 10
    while (left := [pid for pid in everything if alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, [_described(pid) for pid in left]


def _described(pid: int) -> str:
    """A process as /proc shows it, for a failure's message."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid}: gone"
    return f"{pid}: state {stat[0]}, parent {stat[1]}: {command}"
