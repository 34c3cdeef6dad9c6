"""Worker processes: `courtyard serve --workers 2` against one process, in one run.

    uv run python bench/workers.py [--seconds 3] [--rounds 3] [--server granian|hypercorn]

Both servers run side by side (the real `courtyard serve`, the bench plugin of
servers.py) and are measured in turns, round after round (the order alternates each
round; the first starts with a 1 s warm-up of each), on `/api/health/live` (the core
path), `/bench/noop` (a plugin route) and `/hello-quart/` (the example ASGI app, whose
workers the processes share), with 64 keep-alive connections: enough for both
processes to get their share (the kernel spreads connections, not requests). Each
figure is the median over the rounds. Prints tables and writes bench/results/workers.json
(workers_hypercorn.json with `--server hypercorn`).

The figure that matters: 2 processes / 1 process requests per second (goal: at least
1.7 on 2 cores), the median of the rounds' ratios and the worst round's. The load
generator runs on the same machine and takes its share of the cores, as does anything
else running: so the CPU the server's processes got during each load is measured too
(`cores`: CPU seconds of the supervisor and its processes per second of load, from
/proc), and the requests per second per core they got (`rps/core`) tell whether the
processes scale with the cores they get, whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from harness import load, save, serving, smoke, table

PATHS = {"live": "/api/health/live", "plugin": "/bench/noop", "app": "/hello-quart/"}
APPS = Path(__file__).parent.parent / "apps"  # the example apps
CONNECTIONS = 64
COUNTS = (1, 2)


def every_process_ready(url: str, timeout: float = 60) -> None:
    """Wait until /api/health/ready answers 200 on 20 new connections in a row: each
    lands on a process the kernel picks, so every process serves by then (a miss per
    process has odds of 2**-20)."""
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while in_a_row < 20:
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        try:
            with urllib.request.urlopen(f"{url}/api/health/ready", timeout=1) as answer:
                in_a_row = in_a_row + 1 if answer.status == 200 else 0
        except OSError:
            in_a_row = 0
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) of `pid` and of every process under it
    (the server processes, and the app workers), those that ended too: a process's time
    includes that of the children it waited for (an app worker recycled during the load)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, used = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        process = int(stat.parent.name)
        parents[process] = int(fields[1])
        used[process] = sum(int(field) for field in fields[11:15]) / tick

    def under(process: int) -> bool:
        while process > 1:
            if process == pid:
                return True
            process = parents.get(process, 0)
        return False

    return sum(seconds for process, seconds in used.items() if under(process))


def measure(url: str, pid: int, seconds: float) -> dict[str, float]:
    """One load of `url`, with the CPU the server's processes used during it."""
    before, started = cpu_seconds(pid), time.perf_counter()
    figures = load(url, seconds, CONNECTIONS)
    elapsed = time.perf_counter() - started
    cores = (cpu_seconds(pid) - before) / elapsed
    return {**figures, "cores": cores, "rps/core": figures["rps"] / cores if cores else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=smoke(3, 1))
    parser.add_argument("--server", choices=("granian", "hypercorn"), default="granian")
    args = parser.parse_args()
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        servers = {
            count: stack.enter_context(
                serving(
                    "courtyard-cli",
                    env={
                        "COURTYARD_WORKERS": str(count),
                        "COURTYARD_SERVER": args.server,
                        "COURTYARD_APP_DIRS": str(APPS),
                    },
                )
            )
            for count in COUNTS
        }
        for server in servers.values():
            every_process_ready(server.url)
        for round_ in range(args.rounds):
            for scenario, path in PATHS.items():
                for count in COUNTS if round_ % 2 == 0 else COUNTS[::-1]:
                    url, pid = servers[count].url + path, servers[count].process.pid
                    if round_ == 0:
                        load(url, 1, CONNECTIONS)  # warm up
                    samples.setdefault((scenario, count), []).append(
                        measure(url, pid, args.seconds)
                    )

    def median(scenario: str, count: int, key: str) -> float:
        return statistics.median(s[key] for s in samples[scenario, count])

    rows: list[dict[str, object]] = [
        {
            "scenario": scenario,
            "processes": count,
            **{key: median(scenario, count, key) for key in ("rps", "p50_ms", "p99_ms")},
            "cores": median(scenario, count, "cores"),
            "rps/core": median(scenario, count, "rps/core"),
            "errors": int(sum(s["errors"] for s in samples[scenario, count])),
        }
        for scenario in PATHS
        for count in COUNTS
    ]
    summary: list[dict[str, object]] = []
    for scenario in PATHS:
        pairs = list(zip(samples[scenario, 2], samples[scenario, 1], strict=True))
        ratios = [two["rps"] / one["rps"] for two, one in pairs]
        per_core = [two["rps/core"] / one["rps/core"] for two, one in pairs if one["rps/core"]]
        summary.append(
            {
                "scenario": scenario,
                "2/1 rps": statistics.median(ratios),
                "worst round": min(ratios),
                "2/1 cores": median(scenario, 2, "cores") / median(scenario, 1, "cores"),
                "2/1 rps/core": statistics.median(per_core) if per_core else 0.0,
            }
        )
    print(table(rows))
    print()
    print(table(summary))
    record = {
        "server": args.server,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": CONNECTIONS,
        "load_average_after": os.getloadavg(),
        "runs": rows,
        "summary": summary,
    }
    # One file per server: the granian figures and the Hypercorn ones are read side by side.
    name = "workers" if args.server == "granian" else f"workers_{args.server}"
    print(f"\nsaved {save(name, record)}")


if __name__ == "__main__":
    main()
