"""Over real `courtyard serve` processes: the operation's event stream, and a runtime
killed (SIGKILL) in the middle of a step whose task another runtime then runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_kit import SPEC, assert_done, settings


def events_of(client: httpx.Client, op_id: str, timeout: float = 20) -> list[dict[str, Any]]:
    """The operation's SSE events, read until it finished."""
    seen: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/ops/{op_id}/events", timeout=timeout) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: ") and name == f"platform.op.{op_id}":
                seen.append(json.loads(line[len("data: ") :]))
                if seen[-1]["status"] in ("done", "error"):
                    break
    return seen


def test_an_operation_streams_its_progress(courtyard_server: Any) -> None:
    server = courtyard_server(**settings(wait_seconds=0))
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}) as client:
        answer = client.post("/api/events/registration", json={"action": "create", "spec": SPEC})
        op_id = answer.json()["op"]["id"]
        seen = events_of(client, op_id)
        assert_done(seen[-1])
        assert seen[-1] == client.get(f"/api/ops/{op_id}").json()
        # Each step was seen running, then done, in order.
        running = [
            next(s["worker"] for s in event["steps"] if s["status"] == "running")
            for event in seen
            if any(s["status"] == "running" for s in event["steps"])
        ]
        assert list(dict.fromkeys(running)) == [
            "registrar",
            "repoBootstrap",
            "imageBuilder",
            "manifestRenderer",
        ]
        # A late subscriber gets the events still held, the last one included.
        assert events_of(client, op_id)[-1]["status"] == "done"


@pytest.mark.slow
def test_a_runtime_killed_mid_step_leaves_the_step_to_another(
    courtyard_server: Any, tmp_path: Path
) -> None:
    # A stand-in for BuildKit's client: the build takes 3 seconds, long enough to kill
    # the runtime running it. (A reachable daemon address makes imageBuilder build.)
    tools = tmp_path / "bin"
    tools.mkdir()
    buildctl = tools / "buildctl"
    buildctl.write_text(
        '#!/bin/sh\nsleep 3\nfor a in "$@"; do case "$a" in type=oci,dest=*) '
        'echo image > "${a#type=oci,dest=}";; esac; done\n'
    )
    buildctl.chmod(buildctl.stat().st_mode | stat.S_IXUSR)
    daemon = socket.socket()
    daemon.bind(("127.0.0.1", 0))
    daemon.listen(16)
    addr = f"tcp://127.0.0.1:{daemon.getsockname()[1]}"
    env = {"PATH": f"{tools}:{os.environ['PATH']}"}
    config = settings(wait_seconds=0, buildkit_addr=addr, workers=1)
    first = courtyard_server(env=env, **config)
    try:
        with httpx.Client(base_url=first.url, headers={"Origin": first.url}) as client:
            answer = client.post(
                "/api/events/registration", json={"action": "create", "spec": SPEC}
            )
            op_id = answer.json()["op"]["id"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                op = client.get(f"/api/ops/{op_id}").json()
                if op["steps"][2]["status"] == "running":
                    break
                time.sleep(0.05)
            assert op["steps"][2]["status"] == "running", op
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)

        second = courtyard_server(env=env, **config)
        with httpx.Client(base_url=second.url) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                op = client.get(f"/api/ops/{op_id}").json()
                if op["status"] in ("done", "error"):
                    break
                time.sleep(0.1)
        assert_done(op)
        builder = op["steps"][2]
        assert builder["attempts"] == 2
        assert "built with BuildKit" in builder["message"]
        assert "build/image.tar" in builder["artifacts"]
    finally:
        daemon.close()
