"""Queues: Courtyard's task queue on Redis against arq, and the HTTP enqueue rate.

    uv run python bench/queues.py [--tasks 5000] [--rounds 5] [--concurrency 16]
                                  [--seconds 3] [--connections 4] [--quick]

1. **End to end** (one Redis for both, in the same run): --tasks no-op tasks are enqueued
   while a worker waits for them; the figure is the time from the first enqueue to the
   last completion, as tasks per second, and the ratio Courtyard / arq.
   - Courtyard: a real `courtyard serve` with the queues plugin on the redis backend and a
     runqy queue configuration whose deployment is a local git repository holding a
     runqy_python task module (`@task def handle(payload): return None`, `run()`); one
     `courtyard worker --concurrency C` (long_running). The bench enqueues with
     `POST /queue/add-batch` (100 tasks per request, --clients requests at once, with the
     queue's API key). The worker holds up to C tasks at once: it leases them from the
     server over HTTP with `POST /worker/batch`, writes each task as a JSON line to the
     task process (a separate Python process: runqy's stdio protocol), reads its answer
     line, and reports the outcomes of the tasks that ended since its last request in one
     `POST /worker/batch`, which also leases as many tasks as they leave room for (one
     request and one Lua script per batch of tasks, the results stored in Redis; a long
     poll, the same route with `wait`, only when the queue is empty). Every step crosses a
     process boundary: bench -> server -> Redis, server <-> worker over HTTP, worker <->
     task process over pipes.
   - arq (its own environment, see queues_arq.py): one arq worker with `max_jobs` = C
     and `poll_delay` --arq-poll-delay (arq's default, 0.5 s, caps it at about 200
     tasks/s: it sleeps that long after each read of at most 100 jobs), running the task
     as a coroutine in its own event loop (`async def noop(ctx, n): return None`). The
     bench enqueues with `enqueue_job`, from --clients coroutines at once. arq talks to
     Redis directly: no server, no second process per worker, no leases (a job's
     "in progress" key expires instead), results kept as pickles. arq requires hiredis
     (redis-py's C reply parser); Courtyard's server runs the workspace's redis-py 8
     without it (a trial with hiredis installed measured no gain).
   Both keep their results (Courtyard for a day, arq for an hour), both log at warning
   level (neither logs each task), and both use the one Redis (no AOF, no snapshots). The
   bench waits for the end by looking at Redis every 5 ms (the size of Courtyard's
   completed set, the size of arq's queue), then checks that every task completed.
   Rounds alternate which side goes first; the figures are medians over the rounds,
   after a warm-up round of a tenth of the tasks each.
2. **HTTP enqueue rate**: `POST /queue/add` (one task per request) against
   `POST /queue/add-batch` (100 tasks per request), on the sql backend (SQLite, the
   runtime's database) and on the redis backend, each from --connections keep-alive
   connections for --seconds (wrk when installed, else loadgen.py; see harness.py). No
   worker runs, so the queue only grows. These servers run without an API key (the load
   generators send no Authorization header), so no key is checked.

CPU time: for each round, the CPU seconds (user + system, from /proc) each process of
a side used, per task: Courtyard's server, worker, task process and redis-server; arq's
worker and redis-server (the enqueueing client, the bench itself or arq's `round`, is
not counted on either side).

Prints tables and writes bench/results/queues.json (queues-quick.json with --quick, which
runs 1000 tasks, one round and 1 s per load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from courtyard.testing import free_port
from harness import BENCH, SMOKE, Server, load, require, save, smoke, table, wait_for
from redis import Redis

ARQ = "arq==0.28.0"
KEY = "bench-runqy-api-key"
QUEUE = "bench"
SUB_QUEUE = "bench.default"
PREFIX = "bench"  # the Courtyard server's Redis key prefix
BATCH = 100  # tasks per add-batch request
POLL = 0.005  # seconds between two looks at Redis while waiting for the last task
ROUND_LIMIT = 600  # seconds a round may take before the bench gives up

NOOP_TASK = """
from runqy_python import run, task


@task
def handle(payload):
    return None


if __name__ == "__main__":
    run()
"""

CONFIG = f"""
queues:
  {QUEUE}:
    priority: 1
    deployment:
      git_url: {{repo}}
      branch: main
      startup_cmd: python noop.py
      startup_timeout_secs: 60
      requirements_file: requirements.txt
"""


# Processes ------------------------------------------------------------------------------


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, without persistence: its URL (db 0)."""
    binary = require("redis-server", "redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        global REDIS_PID
        REDIS_PID = process.pid
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(process)


# CPU time -------------------------------------------------------------------------------

REDIS_PID: int | None = None  # the bench's redis-server, once started
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None, tree: bool = False) -> float:
    """CPU time (user + system) a process used so far, with its descendants' when `tree`
    (from /proc: Linux only; 0 where it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    if tree:
        own += sum(cpu_seconds(child, tree=True) for child in children(pid))
    return own


def children(pid: int) -> list[int]:
    """The process's children (from /proc: those of each of its threads)."""
    found: list[int] = []
    for thread in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (thread / "children").read_text().split()]
        except OSError:
            continue
    return found


class CpuMeter:
    """CPU seconds of named processes over a round: `meter = CpuMeter(pids)`, then
    `meter.per_task(tasks)` gives milliseconds per task for each."""

    def __init__(self, pids: dict[str, tuple[int | None, bool]]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid, tree) for name, (pid, tree) in pids.items()}

    def per_task(self, tasks: int) -> dict[str, float]:
        return {
            name: (cpu_seconds(pid, tree) - self.start[name]) * 1000 / tasks
            for name, (pid, tree) in self.pids.items()
        }


def git(*args: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    identity = ["-c", "user.name=Bench", "-c", "user.email=bench@courtyard.invalid"]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True, env=env)


def task_repo(path: Path) -> Path:
    """A local git repository (branch main) with the no-op runqy task module."""
    path.mkdir(parents=True)
    (path / "noop.py").write_text(NOOP_TASK)
    (path / "requirements.txt").write_text("runqy-python\n")
    git("init", "--quiet", cwd=path)
    git("checkout", "--quiet", "-B", "main", cwd=path)
    git("add", "--all", cwd=path)
    git("commit", "--quiet", "-m", "no-op task", cwd=path)
    return path


@contextmanager
def courtyard(
    folder: Path, plugin: dict[str, Any], env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`courtyard serve` (every installed plugin, the queues plugin with `plugin`)."""
    folder.mkdir(parents=True)
    port = free_port()
    lines = [f'data_dir = "{folder / "data"}"', 'log_level = "warning"', "[plugins.queues]"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in plugin.items()]
    (folder / "courtyard.toml").write_text("\n".join(lines) + "\n")
    command = [
        sys.executable,
        "-m",
        "courtyard",
        "serve",
        "--config",
        str(folder / "courtyard.toml"),
    ]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    base = {k: v for k, v in os.environ.items() if k not in ("RUNQY_API_KEY", "COURTYARD_API_KEY")}
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**base, **(env or {})}
        )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_for(server.url + "/api/health/ready", process=process)
        yield server
    finally:
        stop(process)


def arq_command(*args: str) -> list[str]:
    """Run queues_arq.py with arq in a throwaway environment on this Python."""
    return [*_arq_python(), str(BENCH / "queues_arq.py"), *args]


def _arq_python() -> list[str]:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is needed to run arq in an environment of its own (pip install uv)")
    python = getattr(sys, "_base_executable", sys.executable)
    command = [uv, "run", "--quiet", "--no-project", "--isolated", "--python", python]
    return [*command, "--with", ARQ, "python"]


def require_arq() -> None:
    """Exit 0, saying why, when arq cannot be installed (not in uv's cache, and the
    package index out of reach)."""
    found = subprocess.run(
        [*_arq_python(), "-c", "import arq"], capture_output=True, text=True, timeout=300
    )
    if found.returncode != 0:
        why = (found.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"skipped: {ARQ} cannot be installed (PyPI package arq): {why}")
        sys.exit(0)


# End to end -----------------------------------------------------------------------------


class Courtyard:
    """The Courtyard side: a server on Redis and one worker."""

    def __init__(self, stack: ExitStack, folder: Path, redis_url: str, concurrency: int) -> None:
        config = folder / "queues.yaml"
        config.write_text(CONFIG.format(repo=task_repo(folder / "repo")))
        plugin = {
            "backend": "redis",
            "redis_url": f"{redis_url}/0",
            "redis_prefix": PREFIX,
            "config_files": [str(config)],
        }
        self.server = stack.enter_context(
            courtyard(folder / "server", plugin, {"RUNQY_API_KEY": KEY})
        )
        self.redis = stack.enter_context(Redis.from_url(f"{redis_url}/0"))
        self.headers = {"Authorization": f"Bearer {KEY}"}
        log = stack.enter_context((folder / "worker.log").open("wb"))
        command = [sys.executable, "-m", "courtyard", "worker", "--server", self.server.url]
        command += ["--api-key", KEY, "--queue", QUEUE, "--concurrency", str(concurrency)]
        command += ["--workdir", str(folder / "work"), "--worker-id", "bench-worker"]
        command += ["--log-level", "warning"]
        worker = subprocess.Popen(
            command,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "UV_OFFLINE": "1", "PIP_NO_INDEX": "1"},  # from uv's cache
        )
        stack.callback(stop, worker)
        self.worker = worker
        self.worker_log = folder / "worker.log"
        self._wait_running(worker, folder / "worker.log")

    def _wait_running(self, worker: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 120  # the first start makes the task's venv
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"courtyard worker exited:\n{log.read_text()}")
            answer = httpx.get(f"{self.server.url}/api/cli/workers", headers=self.headers)
            running = [w for w in answer.json()["workers"] if w["status"] == "running"]
            if any(w["worker_id"] == "bench-worker" for w in running):
                return
            time.sleep(0.1)
        raise TimeoutError(f"courtyard worker not running:\n{log.read_text()}")

    def stats(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.server.url}/api/cli/queues/{SUB_QUEUE}", headers=self.headers)
        answer.raise_for_status()
        return dict(answer.json())

    def round(self, tasks: int, clients: int) -> dict[str, Any]:
        before = self.stats()
        completed_key = f"{PREFIX}:q:{SUB_QUEUE}:completed"  # see lua/common.lua
        done_before = int(self.redis.zcard(completed_key))
        task_process = next(iter(children(self.worker.pid)), None)
        meter = CpuMeter(
            {
                "server": (self.server.process.pid, False),
                "worker": (self.worker.pid, False),
                "task process": (task_process, False),
                "redis-server": (REDIS_PID, False),
            }
        )
        outcome: dict[str, Any] = asyncio.run(self._enqueue(tasks, clients))
        deadline = time.monotonic() + ROUND_LIMIT
        while int(self.redis.zcard(completed_key)) - done_before < tasks:
            if self.server.process.poll() is not None or self.worker.poll() is not None:
                raise RuntimeError(f"the server or the worker died:\n{self.worker_log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the round did not end within {ROUND_LIMIT} s")
            time.sleep(POLL)
        outcome["seconds"] = time.perf_counter() - outcome.pop("started")
        outcome["cpu_ms_per_task"] = meter.per_task(tasks)
        after = self.stats()
        outcome["results"] = after["completed"] - before["completed"]
        outcome["failed"] = after["failed"] - before["failed"]
        return outcome

    async def _enqueue(self, tasks: int, clients: int) -> dict[str, float | int]:
        starts = iter(range(0, tasks, BATCH))
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.headers) as client:

            async def one_client() -> None:
                for start in starts:
                    jobs = [{"data": {"n": n}} for n in range(start, min(tasks, start + BATCH))]
                    answer = await client.post(
                        "/queue/add-batch", json={"queue": QUEUE, "jobs": jobs}
                    )
                    answer.raise_for_status()
                    assert answer.json()["enqueued"] == len(jobs), answer.text

            started = time.perf_counter()
            await asyncio.gather(*(one_client() for _ in range(clients)))
            return {"started": started, "enqueue_seconds": time.perf_counter() - started}


class Arq:
    """The arq side: one arq worker on the same Redis (db 1)."""

    def __init__(
        self, stack: ExitStack, folder: Path, redis_url: str, concurrency: int, poll_delay: float
    ) -> None:
        self.url = f"{redis_url}/1"
        log = stack.enter_context((folder / "arq-worker.log").open("wb"))
        worker = subprocess.Popen(
            [
                *arq_command("worker", self.url, "--concurrency", str(concurrency)),
                "--poll-delay",
                str(poll_delay),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        stack.callback(stop, worker)
        self.worker = worker
        assert worker.stdout is not None
        line = worker.stdout.readline()  # "ready" once it polls, or nothing if it died
        if line.strip() != b"ready":
            stop(worker)
            raise RuntimeError(
                f"arq worker did not start:\n{(folder / 'arq-worker.log').read_text()}"
            )

    def round(self, tasks: int, clients: int) -> dict[str, Any]:
        command = arq_command("round", self.url, "--tasks", str(tasks), "--clients", str(clients))
        # The arq worker is uv's child: its tree is the worker's Python.
        meter = CpuMeter({"worker": (self.worker.pid, True), "redis-server": (REDIS_PID, False)})
        done = subprocess.run(command, check=True, capture_output=True, timeout=ROUND_LIMIT)
        outcome: dict[str, Any] = json.loads(done.stdout)
        outcome["cpu_ms_per_task"] = meter.per_task(tasks)
        outcome["failed"] = tasks - outcome["results"]
        return outcome


def end_to_end(args: argparse.Namespace, folder: Path, redis_url: str) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"courtyard": [], "arq": []}
    with ExitStack() as stack:
        sides = {
            "courtyard": Courtyard(stack, folder / "courtyard", redis_url, args.concurrency),
            "arq": Arq(stack, folder, redis_url, args.concurrency, args.arq_poll_delay),
        }
        warm_up = max(100, args.tasks // 10)
        for side in sides.values():
            side.round(warm_up, args.clients)
        for round_ in range(args.rounds):
            order = ["courtyard", "arq"] if round_ % 2 == 0 else ["arq", "courtyard"]
            for name in order:
                outcome = sides[name].round(args.tasks, args.clients)
                if outcome["results"] != args.tasks or outcome["failed"]:
                    raise RuntimeError(f"{name}: not every task completed: {outcome}")
                outcome["tasks_per_s"] = args.tasks / float(outcome["seconds"])
                samples[name].append(outcome)
                print(f"  round {round_ + 1} {name}: {outcome['tasks_per_s']:.0f} tasks/s")

    def median(name: str, key: str) -> float:
        return statistics.median(float(s[key]) for s in samples[name])

    rows = [
        {
            "side": name,
            "tasks": args.tasks,
            "tasks/s": median(name, "tasks_per_s"),
            "seconds": median(name, "seconds"),
            "enqueue s": median(name, "enqueue_seconds"),
        }
        for name in samples
    ]
    ratios = [
        c["tasks_per_s"] / a["tasks_per_s"]
        for c, a in zip(samples["courtyard"], samples["arq"], strict=True)
    ]
    summary = {"courtyard/arq": statistics.median(ratios), "worst round": min(ratios)}
    cpu = [
        {
            "side": name,
            "process": process,
            "cpu ms/task": statistics.median(s["cpu_ms_per_task"][process] for s in samples[name]),
        }
        for name in samples
        for process in samples[name][0]["cpu_ms_per_task"]
    ]
    return {"rows": rows, "summary": summary, "cpu": cpu, "samples": samples}


# HTTP enqueue rate ----------------------------------------------------------------------


def enqueue_rate(args: argparse.Namespace, folder: Path, redis_url: str) -> dict[str, Any]:
    config = folder / "enqueue.yaml"
    config.write_text(CONFIG.format(repo=folder / "no-repo"))  # no worker: never cloned
    backends = {
        "sql": {"config_files": [str(config)]},
        "redis": {
            "backend": "redis",
            "redis_url": f"{redis_url}/2",
            "redis_prefix": "enqueue",
            "config_files": [str(config)],
        },
    }
    one = json.dumps({"queue": QUEUE, "data": {"n": 1}})
    batch = json.dumps({"queue": QUEUE, "jobs": [{"data": {"n": n}} for n in range(BATCH)]})
    scenarios = {"add": ("/queue/add", one, 1), "add-batch": ("/queue/add-batch", batch, BATCH)}
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(courtyard(folder / f"enqueue-{name}", plugin))
            for name, plugin in backends.items()
        }
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
            for scenario, (path, body, _) in scenarios.items():
                for name in order:
                    url = servers[name].url + path
                    if round_ == 0:
                        load(url, 1, args.connections, body)  # warm up
                    samples.setdefault((name, scenario), []).append(
                        load(url, args.seconds, args.connections, body)
                    )
        for name, server in servers.items():  # what was enqueued is there
            with urllib.request.urlopen(f"{server.url}/api/cli/queues/{SUB_QUEUE}") as answer:
                pending = json.load(answer)["pending"]
            print(f"  {name}: {pending} tasks pending after the runs")
    rows = []
    for (name, scenario), runs in samples.items():
        per_request = scenarios[scenario][2]
        rps = statistics.median(s["rps"] for s in runs)
        rows.append(
            {
                "backend": name,
                "endpoint": scenario,
                "tasks/request": per_request,
                "requests/s": rps,
                "tasks/s": rps * per_request,
                "p50 ms": statistics.median(s["p50_ms"] for s in runs),
                "p99 ms": statistics.median(s["p99_ms"] for s in runs),
                "errors": int(sum(s["errors"] for s in runs)),
            }
        )
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tasks", type=int, default=smoke(5000, 100), help="tasks per end-to-end round"
    )
    parser.add_argument("--rounds", type=int, default=smoke(5, 1))
    parser.add_argument("--concurrency", type=int, default=16, help="worker slots (arq max_jobs)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent enqueueing clients")
    parser.add_argument("--arq-poll-delay", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=3, help="seconds per enqueue load")
    parser.add_argument("--connections", type=int, default=4, help="enqueue load connections")
    parser.add_argument("--quick", action="store_true", help="1000 tasks, 1 round, 1 s loads")
    parser.add_argument("--skip", choices=["end-to-end", "enqueue"], help="leave one part out")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.rounds, args.seconds = 1000, 1, 1.0
    require("redis-server", "redis-server")
    if args.skip != "end-to-end":
        require_arq()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "tasks": args.tasks,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "clients": args.clients,
        "arq": ARQ,
        "arq_poll_delay": args.arq_poll_delay,
        "seconds": args.seconds,
        "connections": args.connections,
        "batch": BATCH,
    }
    with tempfile.TemporaryDirectory(prefix="courtyard-bench-queues-") as tmp:
        folder = Path(tmp)
        with redis_server(folder / "redis") as redis_url:
            if args.skip != "end-to-end":
                print(f"end to end: {args.tasks} no-op tasks on Redis, {args.rounds} round(s)")
                results["end_to_end"] = end_to_end(args, folder, redis_url)
            if args.skip != "enqueue":
                print("HTTP enqueue rate")
                results["enqueue"] = enqueue_rate(args, folder, redis_url)
    if "end_to_end" in results:
        print()
        print(table(results["end_to_end"]["rows"]))
        print()
        print(table(results["end_to_end"]["cpu"]))
        print()
        print(table([results["end_to_end"]["summary"]]))
    if "enqueue" in results:
        print()
        print(table(results["enqueue"]["rows"]))
    results["wall_seconds"] = time.perf_counter() - started
    path = save("queues-quick" if args.quick or SMOKE else "queues", results)
    print(f"\nsaved {path} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up servers on SIGTERM
    main()
