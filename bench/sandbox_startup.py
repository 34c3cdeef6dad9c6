"""Start-up cost of the app workers' sandbox: a sandboxed worker (bubblewrap) against an
unsandboxed one, in one run.

    uv run python bench/sandbox_startup.py [--repeat 15] [--app echo|quart]

Each request goes to a fresh worker (the app's `ttl = 0`), so its time is a worker's start
(interpreter, import of the app, listening) plus one small request. Sandboxed and
unsandboxed starts alternate; the figure is the ratio of their medians (sandboxed /
unsandboxed). The one-off self-test of the sandbox (on the first start) is measured apart.
Writes bench/results/sandbox_startup.json. Needs bwrap (Debian package bubblewrap).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from courtyard.apps.pool import AppSettings, WorkerApp, WorkerPool
from harness import BENCH, require, save, smoke, table

FIXTURES = BENCH.parent / "tests" / "fixtures" / "apps"
PATHS = {"echo": "/", "quart": "/hello"}  # a route each app answers 200


def client(pool: WorkerPool, app: WorkerApp) -> httpx.AsyncClient:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await pool.handle(app, scope, receive, send)

    transport = httpx.ASGITransport(app=asgi)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60)


async def timed_get(http: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    answer = await http.get(path)
    took = time.perf_counter() - started
    if answer.status_code != 200:
        sys.exit(f"the worker did not serve: {answer.status_code} {answer.text}")
    return took


async def run(repeat: int, name: str) -> list[dict[str, object]]:
    folder = Path(tempfile.mkdtemp(prefix="courtyard-bench-"))
    try:
        shutil.copytree(FIXTURES / name, folder / "apps" / name)
        root = folder / "apps" / name / "1.0.0"
        app = WorkerApp(f"{name}@1.0.0", root, f"{name}_app:app", AppSettings(ttl=0))
        sandboxed = WorkerPool(folder / "run-a", grace=1.0)
        plain = WorkerPool(
            folder / "run-b", grace=1.0, bwrap="courtyard-no-bwrap", allow_unsandboxed=True
        )
        times: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": []}
        async with client(sandboxed, app) as boxed, client(plain, app) as bare:
            path = PATHS[name]
            first = {
                "sandboxed": await timed_get(boxed, path),
                "unsandboxed": await timed_get(bare, path),
            }
            for _ in range(repeat):
                times["sandboxed"].append(await timed_get(boxed, path))
                times["unsandboxed"].append(await timed_get(bare, path))
        await sandboxed.close()
        await plain.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [
        {
            "workers": kind,
            "first_start_s": first[kind],
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
        }
        for kind, values in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=smoke(15, 1))
    parser.add_argument("--app", choices=("echo", "quart"), default="echo")
    args = parser.parse_args()
    require("bwrap", "bubblewrap")
    rows = asyncio.run(run(args.repeat, args.app))
    print(table(rows))
    boxed, bare = (float(row["median_s"]) for row in rows)  # type: ignore[arg-type]
    ratio = boxed / bare
    print(f"\nsandboxed / unsandboxed start-up: {ratio:.2f} (+{(boxed - bare) * 1000:.0f} ms)")
    print(f"saved {save('sandbox_startup', {'app': args.app, 'rows': rows, 'ratio': ratio})}")


if __name__ == "__main__":
    main()
