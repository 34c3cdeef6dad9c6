"""The runtime on each HTTP server and event loop, side by side, in one run.

    uv run python bench/servers_compare.py [--seconds 3] [--rounds 3] [--connections 32]

Four `courtyard serve` processes run at once, one per combination of `--server`
(hypercorn, granian) and `--loop` (asyncio, uvloop), each with the bench routes plugin
(servers.py) at /bench, the example apps (apps/) and every installed plugin. Four routes
are measured on each, in turns, round after round (the order of the servers alternates
each round), so that drift of the machine hits all of them alike:

- live: `GET /api/health/live`, a core route;
- plugin: `GET /bench/noop`, a plugin route;
- static: `GET /hello-static/`, a static app's index.html;
- asgi: `GET /hello-quart/`, the ASGI app, through its worker process.

Each figure is the median over the rounds, with the worst round beside it; the ratios
are to Hypercorn on asyncio (the default before granian and uvloop), taken per round:
their median and the worst. Writes bench/results/servers_compare.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BENCH, free_port, load, save, smoke, table, wait_for
from servers import write_bench_plugins

SERVERS = [  # name, --server, --loop
    ("hypercorn/asyncio", "hypercorn", "asyncio"),
    ("hypercorn/uvloop", "hypercorn", "uvloop"),
    ("granian/asyncio", "granian", "asyncio"),
    ("granian/uvloop", "granian", "uvloop"),
]
BASE = SERVERS[0][0]
ROUTES = [
    ("live", "/api/health/live"),
    ("plugin", "/bench/noop"),
    ("static", "/hello-static/"),
    ("asgi", "/hello-quart/"),
]


def start(server: str, loop: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `courtyard serve` on `server` and `loop`, its data in a folder of its own."""
    port = free_port()
    command = [sys.executable, "-m", "courtyard", "serve", "--server", server, "--loop", loop]
    command += ["--port", str(port), "--log-level", "warning"]
    command += ["--plugin-dir", str(tmp / "plugins"), "--app-dir", str(BENCH.parent / "apps")]
    command += ["--data-dir", str(tmp / f"data-{server}-{loop}")]
    return subprocess.Popen(command), f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=smoke(3, 1))
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        write_bench_plugins(tmp / "plugins")
        running = {name: start(server, loop, tmp) for name, server, loop in SERVERS}
        try:
            for process, url in running.values():
                wait_for(url + "/api/health/ready", process=process)
            for round_ in range(args.rounds):
                for route, path in ROUTES:
                    names = [name for name, *_ in SERVERS]
                    for name in names if round_ % 2 == 0 else names[::-1]:
                        url = running[name][1] + path
                        if round_ == 0:
                            load(url, 1, args.connections)  # warm up (the app's worker starts)
                        figures = load(url, args.seconds, args.connections)
                        samples.setdefault((name, route), []).append(figures)
        finally:
            for process, _ in running.values():
                process.terminate()
            for process, _ in running.values():
                process.wait(60)
    rows, summary = figures_of(samples)
    print(table(rows))
    print()
    print(table(summary))
    path = save(
        "servers_compare",
        {"rounds": args.rounds, "seconds": args.seconds, "runs": rows, "summary": summary},
    )
    print(f"\nsaved {path}")


def figures_of(
    samples: dict[tuple[str, str], list[dict[str, float]]],
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """A row per server and route (medians over the rounds, and the worst round's rate),
    and per route and server the ratio to `BASE`: median and worst of the rounds' ratios."""
    rows: list[dict[str, object]] = []
    summary: list[dict[str, object]] = []
    for route, _ in ROUTES:
        for name, *_ in SERVERS:
            runs = samples[name, route]
            rows.append(
                {
                    "route": route,
                    "server": name,
                    "rps": statistics.median(s["rps"] for s in runs),
                    "worst rps": min(s["rps"] for s in runs),
                    "p50_ms": statistics.median(s["p50_ms"] for s in runs),
                    "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                    "errors": int(sum(s["errors"] for s in runs)),
                }
            )
            if name != BASE:
                ratios = [
                    s["rps"] / b["rps"] for s, b in zip(runs, samples[BASE, route], strict=True)
                ]
                summary.append(
                    {
                        "route": route,
                        "server": name,
                        f"/ {BASE} rps": statistics.median(ratios),
                        "worst round": min(ratios),
                    }
                )
    return rows, summary


if __name__ == "__main__":
    main()
