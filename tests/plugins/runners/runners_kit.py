"""Helpers shared by the runners tests."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")
# Fast clocks: heartbeats every 0.2 s, inactive after 3 missed ones (0.6 s).
FAST = {"heartbeat_seconds": 0.2, "missed_heartbeats": 3, "sweep_seconds": 0.1}
RUNNER = {
    "name": "docker-runner-1",
    "type": "docker",
    "host": "localhost",
    "port": 8081,
    "capabilities": ["docker"],
    "metadata": {"os": "linux", "arch": "amd64"},
}


def error_of(answer: httpx.Response) -> dict[str, Any]:
    """The RustCI error of an answer, checked for its envelope."""
    body = answer.json()
    assert body["success"] is False, body
    assert TIMESTAMP.match(body["error"]["details"]["timestamp"]), body
    return body["error"]


async def register(client: Any, **fields: Any) -> tuple[str, str]:
    """Register a runner (native by default); its id and token."""
    body = {"name": "r1", "type": "native", **fields}
    answer = await client.post("/api/runners/register", json=body)
    assert answer.status_code == 201, answer.text
    data = answer.json()
    return data["runner_id"], data["registration_token"]


def wait_for(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(interval)


def start_agent(
    url: str, token: str, work_dir: Any, *extra: str, env: dict[str, str] | None = None
) -> Any:
    """`courtyard runner start` as a subprocess (stopped by the caller)."""
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "courtyard",
            "runner",
            "start",
            "--url",
            url,
            "--token",
            token,
            "--work-dir",
            str(work_dir),
            "--grace",
            "5",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def stop_agent(process: Any, timeout: float = 15.0) -> str:
    """SIGTERM the agent, wait for it; its output."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read().decode(errors="replace") if process.stdout else ""


def job_of(client: Any, runner_id: str, job_id: str) -> dict[str, Any]:
    """A job as the API shows it (sync client)."""
    answer = client.get(f"/api/runners/{runner_id}/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_job(
    client: Any, runner_id: str, job_id: str, states: tuple[str, ...], timeout: float = 15.0
) -> dict[str, Any]:
    """Wait for the job to reach one of `states`."""
    return wait_for(
        lambda: (j := job_of(client, runner_id, job_id))["status"] in states and j,
        timeout,
    )
