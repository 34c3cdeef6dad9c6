"""The crash test: 10 000 no-op tasks, the worker killed with SIGKILL mid-run
and a new one started. Every task ends completed, none is lost, and the server records
each completion once; only the tasks in flight at the kill ran twice.

It runs on the SQL backend (SQLite) and on Redis, and takes well over 30 s on a
two-core machine: it is marked `slow` (`pytest -m "not slow"` skips it).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from courtyard.testing import Server
from worker_kit import WorkerProcess, alive, make_repo, start_worker

KEY = "crash-test-runqy-key"
TASKS = 10_000
CONCURRENCY = 16

# A no-op runqy task that records its run: one short line, appended (O_APPEND writes
# of a line are atomic, so two processes never interleave their lines).
NOOP = """
import os

from runqy_python import run, task

RUNS = os.open(os.environ["RUNS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
with open("pid", "w") as handle:
    handle.write(str(os.getpid()))


@task
def handle(payload):
    os.write(RUNS, f"{payload['n']}\\n".encode())
    return {"n": payload["n"]}


if __name__ == "__main__":
    run()
"""

CONFIG = """
queues:
  bulk:
    priority: 1
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python noop.py
      startup_timeout_secs: 60
      requirements_file: requirements.txt
"""


def stats(client: httpx.Client) -> dict[str, int]:
    answer = client.get("/api/cli/queues/bulk.default")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_no_task_is_lost_when_a_worker_is_killed(
    courtyard_server: Callable[..., Server],
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    store: dict[str, str] = {}
    if backend == "redis":
        redis = request.getfixturevalue("redis")
        store = {
            "backend": "redis",
            "redis_url": redis.url,
            "redis_prefix": f"crash:{uuid.uuid4().hex}",
        }
    repo = tmp_path / "repo"
    make_repo(repo, {"noop.py": NOOP, "requirements.txt": "runqy-python\n"})
    config = tmp_path / "queues.yaml"
    config.write_text(CONFIG.format(repo=repo), encoding="utf-8")
    server = courtyard_server(
        only_plugins=["queues"],
        plugins={
            "queues": {
                "config_files": [str(config)],
                "lease_seconds": 2,
                "sweep_seconds": 0.2,
                "heartbeat_seconds": 1,
                **store,
            }
        },
        env={"RUNQY_API_KEY": KEY},
    )
    runs = tmp_path / "runs.txt"
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        jobs = [{"data": {"n": n}} for n in range(TASKS)]
        answer = client.post("/queue/add-batch", json={"queue": "bulk", "jobs": jobs})
        assert answer.status_code == 200, answer.text
        assert answer.json()["enqueued"] == TASKS

        def worker(name: str) -> WorkerProcess:
            return start_worker(
                server.url,
                "bulk",
                tmp_path / name,
                "--concurrency",
                str(CONCURRENCY),
                api_key=KEY,
                env={"RUNS_FILE": str(runs)},
                name=name,
            )

        first = worker("first")
        try:
            # Mid-run: a good share of the tasks done, most still to do.
            deadline = time.monotonic() + 120
            while stats(client)["completed"] < TASKS // 5:
                assert first.process.poll() is None, first.log
                assert time.monotonic() < deadline, first.log
                time.sleep(0.05)
            task_process = int((tmp_path / "first" / "work" / "bulk" / "repo" / "pid").read_text())
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait()
            killed_at = stats(client)
        finally:
            first.kill()
        assert TASKS // 5 <= killed_at["completed"] < TASKS
        # The task process died with its worker (it is never left running on its own).
        deadline = time.monotonic() + 10
        while alive(task_process) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(task_process)

        second = worker("second")
        try:
            deadline = time.monotonic() + 180
            while (now := stats(client))["completed"] < TASKS:
                assert second.process.poll() is None, second.log
                assert time.monotonic() < deadline, f"{now}\n{second.log[-5000:]}"
                time.sleep(0.2)
        finally:
            second.terminate()
        assert second.wait(60) == 0

        final = stats(client)
        assert final["completed"] == TASKS
        # Attempts that ended: each task's one completion, and the leases of the killed
        # worker that expired (counted as failed attempts).
        assert final["processed"] - final["failed"] == TASKS
        assert final["failed"] <= CONCURRENCY
        assert final["pending"] == final["active"] == final["retry"] == final["archived"] == 0

    counts = Counter(int(line) for line in runs.read_text().split())
    assert set(counts) == set(range(TASKS))  # every task ran
    twice = [n for n, count in counts.items() if count > 1]
    # Only tasks leased to the killed worker ran again: those in flight, at most one per
    # slot, and any the killed process had read but not answered.
    assert len(twice) <= CONCURRENCY
    assert all(count == 2 for count in counts.values() if count > 1)
