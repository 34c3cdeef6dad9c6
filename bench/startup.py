"""Start-up: from process start to /api/health/ready = 200, with 0, 10 and 100 plugins.

    uv run python bench/startup.py [--repeat 3]

Runs the real `courtyard serve`; each plugin is trivial (a manifest, a menu and an async
startup hook). Prints the median of the repeats and writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import statistics

from harness import save, serving, smoke, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=smoke(3, 1))
    args = parser.parse_args()
    rows = []
    for plugins in smoke((0, 10, 100), (0, 2)):
        times = []
        for _ in range(args.repeat):
            with serving("courtyard-cli", trivial_plugins=plugins) as server:
                times.append(server.startup_seconds)
        rows.append(
            {
                "plugins": plugins,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
    print(table(rows))
    print(f"\nsaved {save('startup', rows)}")


if __name__ == "__main__":
    main()
