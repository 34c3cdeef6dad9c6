"""What instances share through the database and Redis, with no instance in between:
API keys (a key revoked on one is refused by the other), the event bus (events published
on one reach Server-Sent Events clients of the other) and the queues plugin's Redis
backend (tasks enqueued on one are run by a `courtyard worker` registered through the
other)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cluster_kit import INTERNAL, Cluster, Instance, eventually
from test_events import sse

pytestmark = pytest.mark.slow


def test_a_key_revoked_on_one_instance_is_refused_by_the_other(pair) -> None:
    a, b = pair
    admin = a.create_key("admin", name="operator")  # in the shared database
    on_a = a.client({"Authorization": f"Bearer {admin}"})
    created = on_a.post("/api/keys/", json={"name": "reader", "roles": ["viewer"]})
    assert created.status_code == 201, created.text
    reader = created.json()
    on_b = b.client({"Authorization": f"Bearer {reader['secret']}"})
    assert on_b.get("/api/apps/").status_code == 200  # a key made on A works on B
    # B left open mode too: it looks for keys made elsewhere at most once a second.
    eventually(lambda: b.get("/api/apps/").status_code == 401, "B protected", timeout=2)

    revoked = on_a.delete(f"/api/keys/{reader['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    refused = on_b.get("/api/apps/")  # B's very next request
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "API_KEY_REVOKED"


async def test_events_published_on_one_instance_reach_sse_clients_of_the_other(pair) -> None:
    a, b = pair
    async with (
        httpx.AsyncClient(base_url=a.url, headers=INTERNAL, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
        sse(on_b, "/feed/sse?topics=notes.*") as stream,
    ):
        ids = []
        for n in range(3):
            answer = await on_a.post("/feed/publish", json={"topic": "notes.added", "data": n})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        await on_a.post("/feed/publish", json={"topic": "tasks.done", "data": "not for it"})
        for n, event_id in enumerate(ids):
            event = await stream.next(timeout=5)
            assert event == {"id": event_id, "event": "notes.added", "data": str(n)}


# -- queues: enqueued on A, run by a worker registered through B ---------------------------

TASK_PROGRAM = """\
import json
import os
import sys

print(json.dumps({"status": "ready"}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    result = {"echo": task["payload"], "pid": os.getpid()}
    answer = {"task_id": task["task_id"], "result": result, "error": None, "retry": False}
    print(json.dumps(answer), flush=True)
"""

QUEUES = """\
queues:
  jobs:
    priority: 1
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python tasks.py
      startup_timeout_secs: 30
"""


def git_repo(path: Path, files: dict[str, str]) -> None:
    """A git repository at `path` with `files` committed on `main`."""
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    config = ["-c", "user.name=Cluster Tests", "-c", "user.email=tests@courtyard.invalid"]
    config += ["-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    for args in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", "tasks"]):
        subprocess.run(["git", *config, *args], cwd=path, check=True, env=env, capture_output=True)


def queue_instance(cluster: Cluster, name: str, config: Path, prefix: str) -> Instance:
    """An instance serving the queues plugin (only it) on the Redis backend."""
    plugin = {
        "backend": "redis",
        "redis_url": cluster.redis_url,
        "redis_prefix": prefix,
        "config_files": [str(config)],
        "heartbeat_seconds": 0.5,
        "poll_seconds": 0.2,
    }
    return cluster.instance(
        name, entry_points=True, only_plugins=["queues"], plugins={"queues": plugin}
    )


def test_tasks_enqueued_on_one_instance_run_on_a_worker_registered_through_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("needs git (Debian package git)")
    repo = tmp_path / "tasks-repo"
    git_repo(repo, {"tasks.py": TASK_PROGRAM})
    config = tmp_path / "queues.yaml"  # every instance reads the same file
    config.write_text(QUEUES.format(repo=repo), encoding="utf-8")
    a = queue_instance(cluster, "node-a", config, "cluster-queues")
    b = queue_instance(cluster, "node-b", config, "cluster-queues")
    cluster.start(a, b)

    on_a = a.client()
    answer = on_a.post(
        "/queue/add-batch", json={"queue": "jobs", "jobs": [{"data": {"n": n}} for n in range(5)]}
    )
    assert answer.status_code == 200, answer.text
    task_ids = answer.json()["task_ids"]

    folder = tmp_path / "worker"
    folder.mkdir()
    log_path = folder / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURTYARD_", "RUNQY_"))}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "courtyard", "worker", "--server", b.url),
                *("--queue", "jobs", "--worker-id", "worker-on-b"),
                *("--workdir", str(folder / "work"), "--python", sys.executable),
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "UV_OFFLINE": "1", "PIP_NO_INDEX": "1"},
        )
    try:

        def infos() -> list[dict]:
            return [on_a.get(f"/queue/{task_id}").json()["info"] for task_id in task_ids]

        def all_done() -> bool:
            assert worker.poll() is None, log_path.read_text(errors="replace")
            return all(info["state"] == "completed" for info in infos())

        eventually(all_done, "the tasks enqueued on A completed", timeout=60)
        results = [info["result"] for info in infos()]
        results = [json.loads(r) if isinstance(r, str) else r for r in results]
        assert [r["echo"] for r in results] == [{"n": n} for n in range(5)]
        assert len({r["pid"] for r in results}) == 1  # one long-running task process
        # A lists the worker that registered through B (their registry is shared).
        eventually(lambda: "worker-on-b" in on_a.get("/api/cli/workers").text, "listed on A")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, log_path.read_text(errors="replace")
