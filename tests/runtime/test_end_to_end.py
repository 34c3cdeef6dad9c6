"""A real `courtyard serve` (Hypercorn) on a loopback port."""

import asyncio
import signal
import time

import httpx
import pytest
from courtyard.testing import write_plugin

INTERNAL = {"X-Buntime-Internal": "true"}


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_twenty_reloads_under_load_drop_nothing(
    courtyard_server, add_fixture_plugins, plugin_dir
):
    add_fixture_plugins("hello", "@acme/greeter")
    server = courtyard_server(entry_points=False)
    failures: list[str] = []
    served = 0
    stop = asyncio.Event()

    async def hammer(client: httpx.AsyncClient) -> None:
        nonlocal served
        while not stop.is_set():
            try:
                answer = await client.get("/greeter/load")
                if answer.status_code != 200 or answer.json() != {"message": "hello, load"}:
                    failures.append(f"{answer.status_code} {answer.text}")
                served += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        workers = [asyncio.create_task(hammer(client)) for _ in range(4)]
        reload_times = []
        for _ in range(20):
            started = time.perf_counter()
            answer = await client.post("/api/plugins/reload", headers=INTERNAL)
            reload_times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
        stop.set()
        await asyncio.gather(*workers)

    assert failures == []
    assert served > 100
    assert server.stop() == 0
    events = (
        (plugin_dir.parent / "data" / "plugin-data" / "hello" / "events.log").read_text().split()
    )
    assert events.count("startup") == 21
    assert events.count("shutdown") == 21


async def test_sigterm_finishes_in_flight_requests_then_shuts_down(
    courtyard_server, plugin_dir, add_fixture_plugins
):
    add_fixture_plugins("hello")
    write_plugin(
        plugin_dir,
        "slow",
        "",
        "import asyncio\nfrom courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('s', __name__)\n"
        "    @bp.get('/')\n"
        "    async def slow():\n"
        "        await asyncio.sleep(1)\n"
        "        return {'slow': 'done'}\n"
        "    return bp\n",
    )
    server = courtyard_server(entry_points=False)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pending = asyncio.create_task(client.get("/slow/"))
        await asyncio.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        answer = await pending
    assert answer.json() == {"slow": "done"}
    assert server.process.wait(30) == 0  # SIGTERM was sent above: a second one is not ours
    events = (plugin_dir.parent / "data" / "plugin-data" / "hello" / "events.log").read_text()
    assert events.split() == ["startup", "shutdown"]


def test_health_over_real_http(courtyard_server):
    server = courtyard_server(entry_points=False)
    answer = httpx.get(f"{server.url}/api/health/")
    assert answer.json()["status"] == "healthy"
    assert answer.headers["x-request-id"]
    assert httpx.post(f"{server.url}/api/plugins/reload").status_code == 403
    same_origin = httpx.post(f"{server.url}/api/plugins/reload", headers={"Origin": server.url})
    assert same_origin.status_code == 200


def test_strict_start_failure_exits_non_zero_with_the_cause(courtyard_server, add_fixture_plugins):
    add_fixture_plugins("broken")
    try:
        courtyard_server(entry_points=False, strict=True, ready_timeout=15)
    except RuntimeError as exc:
        message = str(exc)
    else:
        raise AssertionError("a strict server with a broken plugin must not become ready")
    assert "exited early" in message
    assert "strict mode: broken: import failed: RuntimeError: broken on purpose" in message
    # The log shows the plugin's own traceback (where to fix it), once; the refusal to
    # start is a message, not a traceback of the runtime.
    assert message.count("Traceback") == 1
    assert "broken | plugin failed loading with message" in message
    assert "StartupError" not in message and "BuildError" not in message


def test_ready_waits_for_slow_startup_hooks(courtyard_server, plugin_dir):
    write_plugin(
        plugin_dir,
        "sluggish",
        "",
        "import asyncio\nfrom courtyard_sdk import hookimpl\n"
        "@hookimpl\nasync def courtyard_startup(ctx):\n    await asyncio.sleep(1.5)\n",
    )
    started = time.monotonic()
    server = courtyard_server(entry_points=False)
    assert time.monotonic() - started >= 1.5
    assert httpx.get(f"{server.url}/api/health/ready").status_code == 200


def test_json_logs(courtyard_server):
    import json

    server = courtyard_server(entry_points=False, log_format="json")
    httpx.get(f"{server.url}/api/health/", headers={"X-Request-Id": "abc"})
    server.stop()
    lines = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    assert lines, server.log
    assert {"time", "level", "logger", "request_id", "message"} <= set(lines[0])


def test_keep_environment_private_makes_the_process_not_dumpable():
    """App workers run as the same user: the runtime's /proc/<pid>/environ is not theirs.
    (Checked in a child process: the flag is for life.)"""
    import subprocess
    import sys

    code = (
        "import ctypes\n"
        "from courtyard.server import PR_GET_DUMPABLE, keep_environment_private\n"
        "libc = ctypes.CDLL(None)\n"
        "print(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), keep_environment_private(),"
        " libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True", "0"]
