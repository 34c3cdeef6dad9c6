"""A warm ASGI app through the runtime (worker processes) against the same app served
directly by Hypercorn, in one run.

    uv run python bench/app_throughput.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-quart (a Quart JSON route). Both servers run side by
side and are measured in turns; each figure is the median over the rounds. The figure:
runtime / direct requests per second (aim: at least 0.6). Writes
bench/results/app_throughput.json.
"""

from __future__ import annotations

import subprocess
import sys

from harness import BENCH, free_port, runtime_against

APP = BENCH.parent / "apps" / "hello-quart" / "1.0.0"


def main() -> None:
    port = free_port()
    direct = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=APP,
        stderr=subprocess.DEVNULL,
    )
    runtime_against(
        "app_throughput",
        ("direct", direct, f"http://127.0.0.1:{port}/"),
        "/hello-quart/",
        sys.argv[1:],
    )


if __name__ == "__main__":
    main()
