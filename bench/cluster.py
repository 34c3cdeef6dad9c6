"""Several instances behind nginx: requests per second with 1, 2 and 3 instances, and how
long an upload answered by one instance takes to be served by another.

    uv run python bench/cluster.py [--seconds 3] [--rounds 2] [--uploads 10]

Three `courtyard serve` instances share one PostgreSQL and one Redis (`event_bus =
"redis"`), as docs/deployment.md sets them up, each with its own data folder and port;
the bench routes (servers.py's plugin, at /bench) come from a plugin folder all of them
read. nginx (one process) balances `GET /bench/noop` over the first 1, 2 and 3 of them,
round after round (the order alternates), 32 keep-alive connections from wrk (or
loadgen.py); one instance without nginx is measured beside them. Each figure is the
median over the rounds.

Propagation: a static app version is uploaded on instance A (`POST /api/apps/upload`),
then instance B is asked for it every 5 ms from A's answer on: the time from sending the
upload to B's first 200, A's answer time, and how long after A's answer B served it (the
time of one request when B served it at its first look: A waits until every live instance
applied the change before it answers), p50 and max over `--uploads` uploads, and how many
B served at its first look. A version B never serves within 10 s is counted, not timed.

Reported, not asserted: on this machine's 2 cores the instances, nginx, PostgreSQL, Redis
and the load generator share two cores, so more instances cannot give more requests a
second; the figures show what the balancer and the instances' shared services cost.
Needs nginx, redis-server and PostgreSQL (Debian packages nginx, redis-server,
postgresql). Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from courtyard import throwaway
from courtyard.testing import free_port
from harness import load, median_rows, require, save, smoke, table, wait_for
from servers import write_bench_plugins

INTERNAL = {"X-Courtyard-Internal": "true"}
CONNECTIONS = 32
PROPAGATION_TIMEOUT = 10.0  # seconds B gets to serve an upload before it counts as missed


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


# Instances and nginx ---------------------------------------------------------------------


@dataclass
class Instance:
    """One `courtyard serve` of the cluster."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def instances(
    folder: Path, count: int, database_url: str, redis_url: str
) -> Iterator[list[Instance]]:
    """`count` instances on one database and one Redis, each with its own data folder;
    the bench plugin comes from a folder all of them read."""
    shared = folder / "shared-plugins"
    write_bench_plugins(shared)
    started: list[Instance] = []
    try:
        for n in range(count):
            name = f"node-{'abc'[n]}"
            data = folder / name
            port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("COURTYARD_")},
                "COURTYARD_DATABASE_URL": database_url,
                "COURTYARD_REDIS_URL": redis_url,
                "COURTYARD_EVENT_BUS": "redis",
                "COURTYARD_ENTRY_POINTS": "0",
                "COURTYARD_INSTANCE_ID": name,
            }
            command = [sys.executable, "-m", "courtyard", "serve", "--port", str(port)]
            command += ["--data-dir", str(data), "--log-level", "warning"]
            command += ["--plugin-dir", str(data / "plugins"), "--plugin-dir", str(shared)]
            process = subprocess.Popen(command, env=env)
            started.append(Instance(name, process, port))
        for instance in started:
            wait_for(f"{instance.url}/api/health/ready", process=instance.process)
        yield started
    finally:
        for instance in started:
            stop(instance.process)


# Propagation -----------------------------------------------------------------------------


def app_archive(name: str, version: str) -> bytes:
    """A static app version as a .tgz."""
    buffer = io.BytesIO()
    files = {
        "package.json": json.dumps({"name": name, "version": version}).encode(),
        "index.html": f"<h1>{name} {version}</h1>".encode(),
    }
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload_request(url: str, filename: str, data: bytes) -> urllib.request.Request:
    boundary = "courtyard-bench"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**INTERNAL, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return urllib.request.Request(
        f"{url}/api/apps/upload", data=body, headers=headers, method="POST"
    )


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def propagation(a: Instance, b: Instance, uploads: int) -> dict[str, Any]:
    """Upload `uploads` app versions on A; time when B serves each."""
    served, answered, after_answer = [], [], []
    missed = first_look = 0
    for n in range(uploads):
        version = f"1.0.{n}"
        request = upload_request(a.url, "prop.tgz", app_archive("prop", version))
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200, answer.read()
        answered_at = time.perf_counter()
        page = f"{b.url}/prop@{version}/"
        looks = 0
        while status_of(page) != 200:
            looks += 1
            if time.perf_counter() - answered_at > PROPAGATION_TIMEOUT:
                break
            time.sleep(0.005)
        else:
            done = time.perf_counter()
            first_look += looks == 0
            served.append((done - started) * 1000)
            after_answer.append(max(0.0, done - answered_at) * 1000)
            answered.append((answered_at - started) * 1000)
            continue
        missed += 1
        answered.append((answered_at - started) * 1000)

    def stats(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p50_ms": None, "max_ms": None}
        return {"p50_ms": statistics.median(values), "max_ms": max(values)}

    return {
        "uploads": uploads,
        "missed": missed,
        "served_at_first_look": first_look,
        "a_answered": stats(answered),
        "served_on_b": stats(served),
        "b_after_a_answered": stats(after_answer),
    }


# The run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=smoke(2, 1))
    parser.add_argument("--uploads", type=int, default=smoke(10, 2))
    args = parser.parse_args()
    require("nginx", "nginx")
    require("redis-server", "redis-server")
    if throwaway.postgres_bin("initdb") is None:
        print("skipped: PostgreSQL is not installed (Debian package postgresql)")
        sys.exit(0)
    started = time.perf_counter()
    samples: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cy-cluster-")))
        postgres = stack.enter_context(throwaway.postgres_server())
        database_url = throwaway.create_database(postgres, "bench")
        redis_url = stack.enter_context(throwaway.redis_server(folder / "redis")).url
        nodes = stack.enter_context(instances(folder, 3, database_url, redis_url))
        urls = {"direct (1, no nginx)": f"{nodes[0].url}/bench/noop"}
        for count in (1, 2, 3):
            ports = [node.port for node in nodes[:count]]
            lb = throwaway.nginx_balancer(folder / f"nginx-{count}", ports, "max_fails=0")
            urls[f"nginx, {count} instance(s)"] = f"{stack.enter_context(lb).url}/bench/noop"
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
            for name in order:
                if round_ == 0:
                    load(urls[name], 1, CONNECTIONS)  # warm up
                samples.setdefault(name, []).append(load(urls[name], args.seconds, CONNECTIONS))
        a, b = nodes[0], nodes[1]
        print(f"propagation: {args.uploads} upload(s) on {a.name}, served by {b.name}")
        spread = propagation(a, b, args.uploads)
    rows = median_rows(samples, "target")
    timing = [
        {"measure": measure, **{k: "-" if v is None else v for k, v in spread[measure].items()}}
        for measure in ("a_answered", "served_on_b", "b_after_a_answered")
    ]
    print(table(rows))
    print()
    print(table(timing))
    print(
        f"B served {spread['served_at_first_look']} of {spread['uploads']} at its first look "
        f"after A answered; missed (not within {PROPAGATION_TIMEOUT:g} s): {spread['missed']}"
    )
    results = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": CONNECTIONS,
        "runs": rows,
        "propagation": spread,
        "wall_seconds": time.perf_counter() - started,
    }
    print(f"\nsaved {save('cluster', results)}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up servers on SIGTERM
    main()
