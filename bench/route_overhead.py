"""Route overhead: Courtyard against bare Quart and a raw ASGI app, on one machine, in one run.

    uv run python bench/route_overhead.py [--seconds 3] [--rounds 3]

The three servers run side by side (one Hypercorn set-up, servers.py) and are measured in
turns, round after round, so that drift of the machine hits all of them alike; each figure
is the median over the rounds. Prints tables and writes bench/results/route_overhead.json.
The figures that matter: Courtyard / Quart requests per second on the no-op route (goal:
at least 1.0, the median of the rounds' ratios, with no round below 0.95; Courtyard runs
every installed first-party plugin, the gateway's hooks and the audit log included) and
the p50 latency Courtyard adds to it on one connection (goal: at most 1 ms; with 32
connections p50 is mostly queueing, so it follows the requests per second).
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack

from harness import ECHO_BODY, load, save, serving, table

SERVERS = ("raw", "quart", "courtyard")
SCENARIOS = [  # name, path, body, connections
    ("noop", "/bench/noop", None, 32),
    # One connection: latency without queueing, so p50 shows the time a request costs.
    ("noop-1conn", "/bench/noop", None, 1),
    ("echo-1k", "/bench/echo", ECHO_BODY, 32),
    ("slow-50ms", "/bench/slow", None, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        servers = {kind: stack.enter_context(serving(kind)) for kind in SERVERS}
        for round_ in range(args.rounds):
            for scenario, path, body, connections in SCENARIOS:
                # Alternate the order each round, so no server always goes first.
                order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
                for kind in order:
                    url = servers[kind].url + path
                    if round_ == 0:
                        load(url, 1, connections, body)  # warm up
                    figures = load(url, args.seconds, connections, body)
                    samples.setdefault((kind, scenario), []).append(figures)

    def median(kind: str, scenario: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[kind, scenario])

    rows = [
        {
            "server": kind,
            "scenario": scenario,
            "rps": median(kind, scenario, "rps"),
            "p50_ms": median(kind, scenario, "p50_ms"),
            "p99_ms": median(kind, scenario, "p99_ms"),
            "errors": int(sum(s["errors"] for s in samples[kind, scenario])),
        }
        for kind in SERVERS
        for scenario, *_ in SCENARIOS
    ]
    summary = []
    for scenario, *_ in SCENARIOS:
        ratios = [
            c["rps"] / q["rps"]
            for c, q in zip(samples["courtyard", scenario], samples["quart", scenario], strict=True)
        ]
        summary.append(
            {
                "scenario": scenario,
                "courtyard/quart rps": statistics.median(ratios),
                "worst round": min(ratios),
                "added p50 ms": median("courtyard", scenario, "p50_ms")
                - median("quart", scenario, "p50_ms"),
                "quart/raw rps": median("quart", scenario, "rps") / median("raw", scenario, "rps"),
            }
        )
    print(table(rows))
    print()
    print(table(summary))
    path = save(
        "route_overhead",
        {"rounds": args.rounds, "seconds": args.seconds, "runs": rows, "summary": summary},
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
