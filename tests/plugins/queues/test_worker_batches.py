"""`courtyard worker` on Redis through a real `courtyard serve`: it holds several tasks at
once and reports and leases them in batches (`POST /worker/batch`), and every task still
ends as documented: completed once, failed for good, or retried after its process
crashed with other tasks in flight."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from courtyard.testing import Server
from worker_kit import make_repo, runqy_module, start_worker

KEY = "batches-test-runqy-key"
TASKS = 120
CONCURRENCY = 8
PERMANENT = {7, 47, 87}  # fail for good
CRASH = 50  # its first run kills the task process, with other tasks in flight

CONFIG = """
queues:
  bulk:
    priority: 1
    deployment:
      git_url: {repo}
      branch: main
      startup_cmd: python tasks.py
      startup_timeout_secs: 60
      requirements_file: requirements.txt
      limits:
        max_retry: 2
"""


def test_a_worker_reports_and_leases_in_batches_on_redis(
    courtyard_server: Callable[..., Server], tmp_path: Path, redis
) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"tasks.py": runqy_module(), "requirements.txt": "runqy-python\n"})
    config = tmp_path / "queues.yaml"
    config.write_text(CONFIG.format(repo=repo), encoding="utf-8")
    server = courtyard_server(
        only_plugins=["queues"],
        plugins={
            "queues": {
                "config_files": [str(config)],
                "backend": "redis",
                "redis_url": redis.url,
                "redis_prefix": f"batches:{uuid.uuid4().hex}",
                "lease_seconds": 5,
                "sweep_seconds": 0.2,
                "heartbeat_seconds": 0.5,
                "retry_base_seconds": 0.2,
                "retry_max_seconds": 1,
            }
        },
        env={"RUNQY_API_KEY": KEY},
    )
    runs = tmp_path / "runs.txt"
    marker = tmp_path / "crashed-once"

    def payload(n: int) -> dict[str, object]:
        if n in PERMANENT:
            return {"id": f"t{n}", "n": n, "fail": "bad input"}
        if n == CRASH:
            return {"id": f"t{n}", "n": n, "crash": True, "crash_once": str(marker)}
        return {"id": f"t{n}", "n": n}

    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        jobs = [{"data": payload(n)} for n in range(TASKS)]
        added = client.post("/queue/add-batch", json={"queue": "bulk", "jobs": jobs})
        assert added.status_code == 200 and added.json()["enqueued"] == TASKS, added.text
        ids = added.json()["task_ids"]
        worker = start_worker(
            server.url,
            "bulk",
            tmp_path / "worker",
            "--concurrency",
            str(CONCURRENCY),
            "--log-level",
            "debug",
            api_key=KEY,
            env={"RUNS_FILE": str(runs)},
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                stats = client.get("/api/cli/queues/bulk.default").json()
                if stats["completed"] + stats["archived"] == TASKS:
                    break
                assert worker.process.poll() is None, worker.log
                assert time.monotonic() < deadline, f"{stats}\n{worker.log[-5000:]}"
                time.sleep(0.1)
        finally:
            worker.terminate()
        assert worker.wait(60) == 0
        infos = [client.get(f"/queue/{task_id}").json()["info"] for task_id in ids]

    log = worker.log
    assert stats["completed"] == TASKS - len(PERMANENT)
    assert stats["archived"] == len(PERMANENT)
    assert stats["pending"] == stats["active"] == stats["retry"] == 0
    for n, info in enumerate(infos):
        if n in PERMANENT:
            assert info["state"] == "archived" and "bad input" in info["last_err"], info
        else:
            assert info["state"] == "completed", info
            assert json.loads(info["result"])["n"] == n
    # The crash failed the tasks in flight in the process (retried, then completed).
    assert infos[CRASH]["retried"] >= 1
    assert "the task process crashed" in log
    counts = Counter(line.split()[0] for line in runs.read_text().split("\n") if line)
    assert set(counts) == {f"t{n}" for n in range(TASKS)}  # every task ran
    again = [name for name, count in counts.items() if count > 1]
    assert len(again) <= CONCURRENCY  # only those the crash took down
    # Reports went in batches, several at once, and leases with them.
    batches = [
        (int(reported), int(leased))
        for reported, leased in re.findall(r"reported (\d+) task\(s\), leased (\d+)", log)
    ]
    assert sum(reported for reported, _ in batches) >= TASKS
    assert max(reported for reported, _ in batches) > 1
    assert any(leased > 0 for _, leased in batches)
    assert "worker stopped: " in log
