"""`courtyard worker` against the real queues plugin in a `courtyard serve` process:
runqy task modules run unchanged, in long_running and one_shot modes; failures, crashes,
timeouts, cancels and SIGTERM behave as documented."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard.testing import Server
from worker_kit import WorkerProcess, alive, commit, git, make_repo, runqy_module, start_worker

KEY = "test-runqy-key-0123456789"  # the runtime refuses keys under 16 characters

CONFIG = """
queues:
  jobs:
    priority: 5
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python tasks.py
      startup_timeout_secs: 60
      requirements_file: requirements.txt
      mode: long_running
      limits:
        max_retry: 2
  once:
    priority: 3
    mode: one_shot
    deployment:
      git_url: {repo}
      branch: oneshot
      startup_cmd: python tasks.py
      startup_timeout_secs: 60
      requirements_file: requirements.txt
  broken:
    priority: 1
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python missing_file.py
      startup_timeout_secs: 10
  nowhere:
    priority: 1
    deployment:
      git_url: {nowhere}
      branch: main
      startup_cmd: python tasks.py
"""

# Fast clocks: leases and retries happen within a test.
FAST = {
    "lease_seconds": 2,
    "heartbeat_seconds": 0.5,
    "poll_seconds": 0.05,
    "sweep_seconds": 0.1,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 1,
}


@dataclass
class Setup:
    """A server with the queues plugin, the task code's repository, and an HTTP client."""

    server: Server
    client: httpx.Client
    folder: Path
    runs: Path  # every task run appends "<task id> <pid>" here

    def worker(self, queue: str, *options: str, name: str = "worker") -> WorkerProcess:
        return start_worker(
            self.server.url,
            queue,
            self.folder / name,
            *options,
            api_key=KEY,
            env={"RUNS_FILE": str(self.runs)},
            name=name,
        )

    def enqueue(self, queue: str, data: Any, **extra: Any) -> str:
        answer = self.client.post("/queue/add", json={"queue": queue, "data": data, **extra})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["info"]["id"])

    def info(self, task_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/queue/{task_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["info"])

    def wait_state(self, task_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(task_id)
            if info["state"] in states:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {info['state']}, not {states}")
            time.sleep(0.05)

    def runs_of(self, name: str) -> list[int]:
        """The pids of the runs of the task whose payload has `id` = `name`."""
        if not self.runs.exists():
            return []
        return [
            int(pid)
            for line in self.runs.read_text().splitlines()
            for tid, pid in [line.split()]
            if tid == name
        ]


@pytest.fixture
def setup(courtyard_server: Callable[..., Server], tmp_path: Path) -> Iterator[Setup]:
    repo = tmp_path / "repo"
    files = {"tasks.py": runqy_module("long_running"), "requirements.txt": "runqy-python\n"}
    make_repo(repo, files)
    git("checkout", "--quiet", "-b", "oneshot", cwd=repo)
    commit(repo, {"tasks.py": runqy_module("one_shot")}, "one-shot runner")
    git("checkout", "--quiet", "main", cwd=repo)
    config = tmp_path / "queues.yaml"
    config.write_text(CONFIG.format(repo=repo, nowhere=tmp_path / "nowhere"), encoding="utf-8")
    server = courtyard_server(
        only_plugins=["queues"],
        plugins={"queues": {"config_files": [str(config)], **FAST}},
        env={"RUNQY_API_KEY": KEY},
    )
    headers = {"Authorization": f"Bearer {KEY}", "X-Courtyard-Internal": "true"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield Setup(server, client, tmp_path, tmp_path / "runs.txt")


def test_long_running_worker_runs_a_runqy_module(setup: Setup) -> None:
    worker = setup.worker("jobs", "--concurrency", "2")
    try:
        ids = [setup.enqueue("jobs", {"id": f"t{n}", "n": n}) for n in range(6)]
        results = [setup.wait_state(task_id, "completed")["result"] for task_id in ids]
        if isinstance(results[0], str):  # runqy stores the result as JSON text
            results = [json.loads(r) for r in results]
        assert [r["n"] for r in results] == list(range(6))
        pids = {r["pid"] for r in results}
        assert len(pids) == 1  # one process ran every task
        assert {r["loaded_by"] for r in results} == pids  # @load ran once, in it
        workers = setup.client.get("/api/cli/workers").json()
        listed = json.dumps(workers)
        assert "running" in listed and "jobs" in listed, worker.log
        worker.process.send_signal(signal.SIGUSR1)  # "what are you doing?"
        worker.wait_for("worker state:")
        assert "status running; tasks in flight: none" in worker.log
        assert "_lease_loop (runner.py:" in worker.log
    finally:
        worker.terminate()
    assert worker.wait(30) == 0
    assert "worker stopped: 6 completed, 0 failed" in worker.log
    assert not alive(pids.pop())  # its task process went with it


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_one_shot_worker_starts_a_process_per_task(setup: Setup) -> None:
    worker = setup.worker("once", "--concurrency", "2")
    try:
        ids = [setup.enqueue("once", {"id": f"o{n}", "n": n}) for n in range(4)]
        results = [result_of(setup.wait_state(task_id, "completed")) for task_id in ids]
        assert [r["n"] for r in results] == list(range(4))
        assert len({r["pid"] for r in results}) == 4  # one process each
        assert not any(alive(r["pid"]) for r in results)
    finally:
        worker.terminate()
    assert worker.wait(30) == 0


def result_of(info: dict[str, Any]) -> Any:
    result = info["result"]
    return json.loads(result) if isinstance(result, str) else result


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_failures_retries_and_crashes(setup: Setup) -> None:
    worker = setup.worker("jobs")
    try:
        final = setup.enqueue("jobs", {"id": "final", "fail": "bad input"})
        info = setup.wait_state(final, "archived")
        assert "bad input" in json.dumps(info)
        assert info["retried"] == 0  # retry: false archives at once

        retried = setup.enqueue("jobs", {"id": "retried", "retryable": "busy"})
        setup.wait_state(retried, "archived")
        assert len(setup.runs_of("retried")) == 3  # the first run and max_retry (2) retries
        assert setup.info(retried)["last_err"] == "busy"

        marker = setup.folder / "crashed-once"
        crash = setup.enqueue("jobs", {"id": "crash", "crash": True, "crash_once": str(marker)})
        info = setup.wait_state(crash, "completed")
        first, second = setup.runs_of("crash")
        assert first != second  # the crashed process was replaced
        assert result_of(info)["pid"] == second
        assert "the task process crashed; restarting it in" in worker.log
        assert "exited with status 3 during task" in info["last_err"]
    finally:
        worker.terminate()
    assert worker.wait(30) == 0


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_task_over_its_timeout_is_stopped(setup: Setup) -> None:
    worker = setup.worker("jobs")
    try:
        slow = setup.enqueue("jobs", {"id": "slow", "sleep": 60}, timeout=1, max_retry=0)
        started = time.monotonic()
        info = setup.wait_state(slow, "archived", timeout=30)
        assert time.monotonic() - started < 20
        # The worker's own timeout, or the server's when its sweeper came first.
        assert "timed out after 1 s" in info["last_err"] or info["last_err"].startswith("timeout")
        # The process that ran it was killed, and a new one runs the next task.
        (pid,) = setup.runs_of("slow")
        after = result_of(setup.wait_state(setup.enqueue("jobs", {"id": "after"}), "completed"))
        assert after["pid"] != pid and not alive(pid)
    finally:
        worker.terminate()
    assert worker.wait(30) == 0


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_cancelling_an_active_task_stops_it(setup: Setup) -> None:
    worker = setup.worker("jobs")
    try:
        slow = setup.enqueue("jobs", {"id": "slow", "sleep": 60})
        setup.wait_state(slow, "active")
        deadline = time.monotonic() + 20
        while not setup.runs_of("slow") and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = setup.runs_of("slow")
        answer = setup.client.delete(f"/api/cli/tasks/{slow}")
        assert answer.status_code == 200, answer.text
        setup.wait_state(slow, "archived", timeout=20)
        assert setup.info(slow)["last_err"] == "cancelled"
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
        after = setup.enqueue("jobs", {"id": "after"})
        assert result_of(setup.wait_state(after, "completed"))["pid"] != pid
        assert f"task {slow} cancelled by the server" in worker.log
    finally:
        worker.terminate()
    assert worker.wait(30) == 0


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_sigterm_lets_tasks_in_flight_finish(setup: Setup) -> None:
    worker = setup.worker("jobs", "--concurrency", "2", "--shutdown-timeout", "30")
    try:
        ids = [setup.enqueue("jobs", {"id": f"s{n}", "sleep": 1.5}) for n in range(2)]
        for task_id in ids:
            setup.wait_state(task_id, "active")
        worker.terminate()
        assert worker.wait(30) == 0
        for task_id in ids:
            assert setup.info(task_id)["state"] == "completed"
        late = setup.enqueue("jobs", {"id": "late"})
        time.sleep(0.5)
        assert setup.info(late)["state"] == "pending"  # the stopped worker took no more
    finally:
        worker.kill()


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_busy_worker_takes_its_next_tasks_with_its_completions_and_stops_cleanly(
    setup: Setup,
) -> None:
    # Queued before the worker starts, so that each completion asks for (and gets) the
    # next task (test_complete_next.py checks that mechanism). SIGTERM during the third:
    # it finishes, and the rest stay pending and unrun (none leased and left active).
    ids = [setup.enqueue("jobs", {"id": f"b{n}", "sleep": 0.4}) for n in range(8)]
    worker = setup.worker("jobs")
    try:
        setup.wait_state(ids[2], "active")
        worker.terminate()
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    states = [setup.info(task_id)["state"] for task_id in ids]
    assert states[:3] == ["completed"] * 3
    assert "active" not in states and states.count("pending") >= 4
    for n, (task_id, state) in enumerate(zip(ids, states, strict=True)):
        assert len(setup.runs_of(f"b{n}")) == (1 if state == "completed" else 0)
        if state == "pending":
            assert setup.info(task_id)["retried"] == 0


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_sigterm_hands_back_what_does_not_finish_in_time(setup: Setup) -> None:
    worker = setup.worker("jobs", "--shutdown-timeout", "0.5")
    try:
        slow = setup.enqueue("jobs", {"id": "slow", "sleep": 60})
        setup.wait_state(slow, "active")
        while not setup.runs_of("slow"):
            time.sleep(0.05)
        (pid,) = setup.runs_of("slow")
        started = time.monotonic()
        worker.terminate()
        assert worker.wait(30) == 0
        assert time.monotonic() - started < 15
        assert not alive(pid)
        task = setup.info(slow)
        assert task["state"] == "pending" and task["retried"] == 0  # handed back untouched
        assert f"task {slow} handed back" in worker.log
    finally:
        worker.kill()
    # Another worker picks it up.
    fresh = setup.worker("jobs", name="second")
    try:
        setup.client.delete(f"/api/cli/tasks/{slow}")  # it sleeps 60 s: cancel it instead
        setup.wait_state(slow, "archived")
    finally:
        fresh.terminate()
        fresh.wait(30)


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_worker_errors_are_reported_and_exit_1(setup: Setup) -> None:
    wrong_key = start_worker(
        setup.server.url, "jobs", setup.folder / "wrong", api_key="not-the-key"
    )
    assert wrong_key.wait(60) == 1
    assert "error: REGISTER_FAILED:" in wrong_key.log and "401" in wrong_key.log

    unknown = setup.worker("no-such-queue", name="unknown")
    assert unknown.wait(60) == 1
    assert "error: REGISTER_FAILED:" in unknown.log and "404" in unknown.log

    broken = setup.worker("broken", name="broken")
    assert broken.wait(60) == 1
    assert "error: STARTUP_FAILED:" in broken.log
    assert "missing_file.py" in broken.log  # python's own complaint, from stderr

    nowhere = setup.worker("nowhere", name="nowhere")
    assert nowhere.wait(60) == 1
    assert "error: DEPLOYMENT_FAILED: git clone of" in nowhere.log


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_the_worker_waits_for_a_server_that_is_not_up_yet(
    courtyard_server: Callable[..., Server], tmp_path: Path
) -> None:
    from courtyard.testing import free_port

    url = f"http://127.0.0.1:{free_port()}"
    worker = start_worker(url, "jobs", tmp_path / "early", api_key=KEY)
    try:
        worker.wait_for("CONNECTION_FAILED", timeout=30)
        assert worker.process.poll() is None  # still trying
    finally:
        worker.terminate()
    assert worker.wait(30) == 0  # a stop while registering is a clean stop


VAULT_CONFIG = """
queues:
  secret:
    priority: 1
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python tasks.py
      requirements_file: requirements.txt
      vaults: [api-keys]
"""


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_vault_values_reach_the_task_as_environment_variables(
    courtyard_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"tasks.py": runqy_module(), "requirements.txt": "runqy-python\n"})
    config = tmp_path / "queues.yaml"
    config.write_text(VAULT_CONFIG.format(repo=repo), encoding="utf-8")
    # The key comes from the queues plugin's settings, which grant it vaults:* too.
    server = courtyard_server(
        only_plugins=["queues", "vaults"],
        plugins={"queues": {"config_files": [str(config)], "api_key": KEY, **FAST}},
        env={"RUNQY_VAULT_MASTER_KEY": base64.b64encode(b"k" * 32).decode()},
    )
    headers = {"Authorization": f"Bearer {KEY}", "X-Courtyard-Internal": "true"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        assert client.post("/api/vaults", json={"name": "api-keys"}).status_code in (200, 201)
        entry = {"key": "OPENAI_API_KEY", "value": "sk-test-secret-value"}
        answer = client.post("/api/vaults/api-keys/entries", json=entry)
        assert answer.status_code in (200, 201), answer.text
        setup = Setup(server, client, tmp_path, tmp_path / "runs.txt")
        # The worker takes its key from RUNQY_API_KEY, as runqy's does.
        worker = start_worker(server.url, "secret", tmp_path / "worker", env={"RUNQY_API_KEY": KEY})
        try:
            task_id = setup.enqueue("secret", {"id": "v", "env": "OPENAI_API_KEY"})
            result = result_of(setup.wait_state(task_id, "completed"))
            assert result == {"env": "sk-test-secret-value"}
            # The worker's own API key is not handed to task code.
            key_task = setup.enqueue("secret", {"id": "k", "env": "RUNQY_API_KEY"})
            assert result_of(setup.wait_state(key_task, "completed")) == {"env": None}
        finally:
            worker.terminate()
        assert worker.wait(30) == 0
        assert "sk-test-secret-value" not in worker.log  # never logged
        assert "1 vault value(s)" in worker.log


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_task_whose_lease_was_lost_is_abandoned(setup: Setup) -> None:
    worker = setup.worker("jobs")
    try:
        marker = setup.folder / "slept-once"
        task_id = setup.enqueue("jobs", {"id": "lost", "sleep": 30, "sleep_once": str(marker)})
        deadline = time.monotonic() + 30
        while not setup.runs_of("lost"):
            assert time.monotonic() < deadline, worker.log
            time.sleep(0.05)
        # Frozen past its lease (2 s), the worker cannot renew: the server takes the task back.
        os.kill(worker.process.pid, signal.SIGSTOP)
        try:
            setup.wait_state(task_id, "pending", "retry", timeout=20)
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        info = setup.wait_state(task_id, "completed", timeout=30)
        first, second = setup.runs_of("lost")
        assert result_of(info)["pid"] == second != first
        assert not alive(first)  # the abandoned run was stopped
        assert f"task {task_id} abandoned: its lease was lost" in worker.log
    finally:
        worker.terminate()
    assert worker.wait(30) == 0


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_second_signal_hands_back_at_once(setup: Setup) -> None:
    worker = setup.worker("jobs", "--shutdown-timeout", "120")
    try:
        slow = setup.enqueue("jobs", {"id": "slow", "sleep": 60})
        deadline = time.monotonic() + 30
        while not setup.runs_of("slow"):
            assert time.monotonic() < deadline, worker.log
            time.sleep(0.05)
        started = time.monotonic()
        worker.terminate()
        worker.wait_for("stopping: no new tasks; 1 in flight get 120 s to finish")
        worker.terminate()
        assert worker.wait(30) == 0
        assert time.monotonic() - started < 15
        assert setup.info(slow)["state"] == "pending"
        assert "second stop signal: handing tasks in flight back now" in worker.log
    finally:
        worker.kill()
