"""The arq side of bench/queues.py, in an environment of its own.

arq requires redis-py below 6 while the workspace runs redis-py 8, so bench/queues.py runs
this script with `uv run --no-project --isolated --with arq==VERSION` (the same Python):
arq's pinned redis-py (with hiredis, which arq requires) never reaches the workspace.

    python bench/queues_arq.py worker REDIS_URL --concurrency 16 [--poll-delay 0.5]
    python bench/queues_arq.py round REDIS_URL --tasks 5000 [--clients 8]

`worker` runs an arq worker (in-process coroutines, `max_jobs` = --concurrency) for one
no-op coroutine, prints `ready` once it polls, and stops on SIGTERM. `round` enqueues
--tasks jobs of it with `enqueue_job` from --clients concurrent coroutines, waits until the
queue is empty (arq takes a job off its queue when it finishes it) and prints
{"enqueue_seconds", "seconds", "results"} as JSON: seconds from the first enqueue to the
end of the enqueueing, and to the last completion; results counts the jobs whose result
arq kept, each checked to be a success.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from arq import Worker, create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name, result_key_prefix
from arq.jobs import deserialize_result

POLL = 0.005  # seconds between two looks at the queue while waiting for the last job


async def noop(ctx: dict[str, Any], n: int) -> None:
    """The task: nothing."""


async def _ready(ctx: dict[str, Any]) -> None:
    print("ready", flush=True)


def worker(url: str, concurrency: int, poll_delay: float) -> None:
    Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=concurrency,
        poll_delay=poll_delay,
        on_startup=_ready,
        handle_signals=True,
    ).run()


async def run_round(url: str, tasks: int, clients: int) -> dict[str, float | int]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        if await pool.zcard(default_queue_name):
            raise SystemExit("the arq queue is not empty")
        # Results of earlier rounds would be counted: start from none.
        old = [key async for key in pool.scan_iter(match=f"{result_key_prefix}*", count=1000)]
        if old:
            await pool.delete(*old)
        numbers = iter(range(tasks))

        async def client() -> None:
            for n in numbers:
                await pool.enqueue_job("noop", n)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        enqueued = time.perf_counter() - started
        while await pool.zcard(default_queue_name):
            await asyncio.sleep(POLL)
        seconds = time.perf_counter() - started
        keys = [key async for key in pool.scan_iter(match=f"{result_key_prefix}*", count=1000)]
        results = 0
        for chunk in range(0, len(keys), 1000):
            for raw in await pool.mget(keys[chunk : chunk + 1000]):
                if raw is not None and deserialize_result(raw).success:
                    results += 1
        return {"enqueue_seconds": enqueued, "seconds": seconds, "results": results}
    finally:
        await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["worker", "round"])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--poll-delay", type=float, default=0.5)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if args.command == "worker":
        worker(args.url, args.concurrency, args.poll_delay)
    else:
        json.dump(asyncio.run(run_round(args.url, args.tasks, args.clients)), sys.stdout)
        print()


if __name__ == "__main__":
    main()
