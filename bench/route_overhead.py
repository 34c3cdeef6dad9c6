"""Route overhead: Courtyard against bare Quart and a raw ASGI app, on one machine, in one run.

    uv run python bench/route_overhead.py [--seconds 10] [--connections 32]

Prints a table and writes bench/results/route_overhead.json. The figure that matters is
Courtyard / Quart requests per second (goal: at least 0.9) and the p50 latency it adds
(goal: at most 1 ms) on the no-op route.
"""

from __future__ import annotations

import argparse

from harness import ECHO_BODY, load, save, serving, table

SCENARIOS = [
    ("noop", "/bench/noop", None, 32),
    ("echo-1k", "/bench/echo", ECHO_BODY, 32),
    ("slow-50ms", "/bench/slow", None, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    rows = []
    for kind in ("raw", "quart", "courtyard"):
        with serving(kind) as server:
            for scenario, path, body, connections in SCENARIOS:
                load(server.url + path, 1, connections, body)  # warm up
                figures = load(server.url + path, args.seconds, connections, body)
                rows.append({"server": kind, "scenario": scenario, **figures})
    by = {(r["server"], r["scenario"]): r for r in rows}
    summary = []
    for scenario, *_ in SCENARIOS:
        quart, courtyard = by["quart", scenario], by["courtyard", scenario]
        summary.append(
            {
                "scenario": scenario,
                "courtyard/quart rps": courtyard["rps"] / quart["rps"],
                "added p50 ms": courtyard["p50_ms"] - quart["p50_ms"],
                "quart/raw rps": quart["rps"] / by["raw", scenario]["rps"],
            }
        )
    print(table(rows))
    print()
    print(table(summary))
    path = save("route_overhead", {"runs": rows, "summary": summary})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
