"""The runners plugin end to end: a real server (`courtyard serve`) and a real agent
(`courtyard runner start`), on this machine.

    uv run python bench/runners.py [--latency-jobs 100] [--throughput-jobs 200] [--lines 100000]

Three figures:

- submit-to-start latency of trivial jobs, p50 and p99: from the moment
  `POST /api/runners/{id}/jobs` stores the job to the moment the agent's poll takes it
  (`created_at` to `started_at`, both the server's clock, to the millisecond), one job at
  a time (aim: p50 under 100 ms; a polling GitLab runner waits up to its 3-second poll
  interval);
- jobs per second through one agent with `max_concurrent_jobs` 4 (`true` jobs, submitted
  all at once, from the first submission to the last completion);
- log lines per second from one step printing `--lines` lines, from the job's start to
  its completion (reported once every line is stored), with every line then read back
  through `follow=true` and checked: none lost, none reordered.

Writes bench/results/runners.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from harness import free_port, save, smoke, table, wait_for


def seconds(stamp: str) -> float:
    """An answer's RFC 3339 time as Unix seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_done(client: httpx.Client, base: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a job until it ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{base}/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled", "timed_out"):
            return dict(job)
        time.sleep(0.005)
    raise TimeoutError(job_id)


def latency(client: httpx.Client, base: str, count: int) -> dict[str, float]:
    """Submit-to-start of `count` trivial jobs, one after the other."""
    delays = []
    for _ in range(count):
        answer = client.post(
            f"{base}/jobs", json={"name": "t", "steps": [{"name": "s", "run": "true"}]}
        )
        job = wait_done(client, base, answer.json()["job_id"])
        # Both times are the server's: stored when the job was queued, and when the
        # agent's poll took it (before the submit's answer reaches the client, often).
        delays.append((seconds(job["started_at"]) - seconds(job["created_at"])) * 1000)
    delays.sort()
    return {
        "jobs": count,
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


def throughput(client: httpx.Client, base: str, count: int) -> dict[str, float]:
    """`count` trivial jobs through 4 slots."""
    already = client.get(f"{base}/jobs", params={"status": "completed"}).json()["total_count"]
    started = time.perf_counter()
    ids = [
        client.post(
            f"{base}/jobs", json={"name": "t", "steps": [{"name": "s", "run": "true"}]}
        ).json()["job_id"]
        for _ in range(count)
    ]
    while True:  # one light request every 20 ms, not one per job
        done = client.get(f"{base}/jobs", params={"status": "completed", "limit": 1}).json()
        if done["total_count"] >= count + already:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    assert len(ids) == count
    return {"jobs": count, "seconds": elapsed, "jobs_per_second": count / elapsed}


def log_lines(client: httpx.Client, base: str, count: int) -> dict[str, float]:
    """One step printing `count` numbered lines: lines per second, all checked."""
    script = f"seq 1 {count}"
    job_id = client.post(
        f"{base}/jobs", json={"name": "lines", "steps": [{"name": "print", "run": script}]}
    ).json()["job_id"]
    job = wait_done(client, base, job_id, timeout=600)
    assert job["status"] == "completed", job
    messages: list[str] = []
    last_time = 0.0
    cursor: str | None = None
    with httpx.stream(
        "GET",
        f"{client.base_url}{base}/logs",
        params={"follow": "true", "job_id": job_id, "level": "info", "limit": 1},
        headers={"Last-Event-ID": "0"},
        timeout=60,
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                cursor = line[4:]
            elif line.startswith("data: "):
                entry = json.loads(line[6:])
                messages.append(entry["message"])
                last_time = seconds(entry["timestamp"])
                if len(messages) == count:
                    break
    assert cursor is not None
    expected = [str(i) for i in range(1, count + 1)]
    assert messages == expected, "lines lost or reordered"
    # The agent reports the job once every line is stored: completed_at bounds them all.
    elapsed = seconds(job["completed_at"]) - seconds(job["started_at"])
    assert last_time <= seconds(job["completed_at"])
    return {"lines": count, "seconds": elapsed, "lines_per_second": count / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-jobs", type=int, default=smoke(100, 3))
    parser.add_argument("--throughput-jobs", type=int, default=smoke(200, 4))
    parser.add_argument("--lines", type=int, default=smoke(100_000, 200))
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "courtyard.toml"
        config.write_text('only_plugins = ["runners"]\n[plugins."runners"]\nrate_limits = false\n')
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "courtyard",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--log-level",
                "warning",
            ],
        )
        agent = None
        try:
            wait_for(f"{url}/api/health/ready", process=server)
            client = httpx.Client(base_url=url, timeout=60)
            body = client.post("/api/runners/register", json={"name": "bench", "type": "native"})
            runner_id = body.json()["runner_id"]
            token = body.json()["registration_token"]
            base = f"/api/runners/{runner_id}"
            client.put(f"{base}/config", json={"max_concurrent_jobs": 4})
            agent = subprocess.Popen(  # the token in the environment, not in `ps`
                [
                    sys.executable,
                    "-m",
                    "courtyard",
                    "runner",
                    "start",
                    "--url",
                    url,
                    "--work-dir",
                    str(Path(tmp) / "work"),
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, "COURTYARD_RUNNER_TOKEN": token},
            )
            while client.get(f"{base}/status").json()["status"] != "active":
                time.sleep(0.05)
            results = {
                "latency": latency(client, base, args.latency_jobs),
                "throughput": throughput(client, base, args.throughput_jobs),
                "log_lines": log_lines(client, base, args.lines),
            }
        finally:
            for process in (agent, server):
                if process is not None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(60)
    rows = [
        {"figure": "submit-to-start p50 (ms)", "value": results["latency"]["p50_ms"]},
        {"figure": "submit-to-start p99 (ms)", "value": results["latency"]["p99_ms"]},
        {
            "figure": "jobs/s, max_concurrent_jobs 4",
            "value": results["throughput"]["jobs_per_second"],
        },
        {"figure": "log lines/s", "value": results["log_lines"]["lines_per_second"]},
    ]
    print(table(rows))
    print(f"saved {save('runners', {**results, 'cpus': os.cpu_count()})}")


if __name__ == "__main__":
    main()
