"""Memory: server RSS after start-up and after 100 000 requests (a leak shows as growth).

    uv run python bench/memory.py [--requests 100000]

Measures bare Quart and Courtyard the same way, and writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse

from harness import load, save, serving, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    for kind in ("quart", "courtyard"):
        with serving(kind) as server:
            load(server.url + "/bench/noop", 1, 8)  # warm up
            before = server.rss_mb
            served = 0
            while served < args.requests:
                figures = load(server.url + "/bench/noop", 5, 32)
                served += int(figures["rps"] * 5)
            after = server.rss_mb
        rows.append(
            {
                "server": kind,
                "requests": served,
                "rss_start_mb": before,
                "rss_after_mb": after,
                "growth_mb": after - before,
            }
        )
    print(table(rows))
    print(f"\nsaved {save('memory', rows)}")


if __name__ == "__main__":
    main()
