"""Reload under load: 50 plugins, continuous requests, 20 reloads; no request may fail.

    uv run python bench/reload_under_load.py [--plugins 50] [--reloads 20]

Load runs against a plugin route from a separate process for the whole time; the reloads
are sent one after another. Prints reload times (median, max) and the failed requests
(non-2xx answers and socket errors), and writes bench/results/reload_under_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request

from harness import BENCH, save, serving, smoke, table

INTERNAL = {"X-Courtyard-Internal": "true"}


def reload(url: str) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/api/plugins/reload", method="POST", headers=INTERNAL)
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200, answer.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plugins", type=int, default=smoke(50, 3))
    parser.add_argument("--reloads", type=int, default=smoke(20, 2))
    args = parser.parse_args()
    with serving("courtyard-cli", trivial_plugins=args.plugins) as server:
        quiet = reload(server.url)  # how long one takes without load, to size the run
        seconds = max(smoke(30, 5), round(args.reloads * quiet * 20 + 10))
        loader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import json, sys; sys.path.insert(0, sys.argv[1]);"
                "from harness import load;"
                "print(json.dumps(load(sys.argv[2], float(sys.argv[3]), 16, hold=True)))",
                str(BENCH),
                f"{server.url}/bench/noop",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
        )
        time.sleep(1)
        started = time.perf_counter()
        times = [reload(server.url) for _ in range(args.reloads)]
        reloading = time.perf_counter() - started
        figures = json.loads(loader.communicate()[0])
        rss = server.rss_mb
    print(f"one quiet reload {quiet:.2f} s; {args.reloads} under load took {reloading:.1f} s")
    assert reloading < seconds - 1, "the load ended before the reloads did"
    row = {
        "plugins": args.plugins,
        "reloads": args.reloads,
        "reload_median_s": statistics.median(times),
        "reload_max_s": max(times),
        "load_rps": figures["rps"],
        "load_p99_ms": figures["p99_ms"],
        "failed_requests": figures["errors"],
        "rss_after_mb": rss,
    }
    print(table([row]))
    print(f"\nsaved {save('reload_under_load', row)}")
    if figures["errors"]:
        sys.exit(f"{figures['errors']} requests failed during reloads")


if __name__ == "__main__":
    main()
