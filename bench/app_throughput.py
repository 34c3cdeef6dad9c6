"""A warm ASGI app through the runtime (worker processes) against the same app served
directly by Hypercorn, in one run.

    uv run python bench/app_throughput.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-quart (a Quart JSON route). Both servers run side by
side and are measured in turns; each figure is the median over the rounds. The figure:
runtime / direct requests per second (aim: at least 0.6). Writes
bench/results/app_throughput.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from harness import BENCH, compare, free_port, save, side_by_side, table, wait_for

APPS = BENCH.parent / "apps"
APP = APPS / "hello-quart" / "1.0.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    direct_port, runtime_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hypercorn",
                    "--bind",
                    f"127.0.0.1:{direct_port}",
                    "app:app",
                ],
                cwd=APP,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "courtyard",
                    "serve",
                    "--port",
                    str(runtime_port),
                    "--app-dir",
                    str(APPS),
                    "--data-dir",
                    tmp,
                    "--log-level",
                    "warning",
                ],
            ),
        ]
        urls = {
            "direct": f"http://127.0.0.1:{direct_port}/",
            "runtime": f"http://127.0.0.1:{runtime_port}/hello-quart/",
        }
        try:
            for url, server in zip(urls.values(), servers, strict=True):
                wait_for(url, process=server)
            samples = side_by_side(urls, args.rounds, args.seconds)
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
    rows, summary = compare(samples, "runtime", "direct")
    print(table(rows))
    print()
    print(table([summary]))
    print(f"\nsaved {save('app_throughput', {'runs': rows, 'summary': summary})}")


if __name__ == "__main__":
    main()
