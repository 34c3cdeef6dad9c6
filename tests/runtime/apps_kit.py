"""Helpers of the worker pool tests: fixture apps, clients on a pool, and /proc checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from courtyard.apps.pool import AppSettings, WorkerApp, WorkerPool
from courtyard.testing import free_port
from hypercorn.asyncio import serve
from hypercorn.config import Config

Scope = dict[str, Any]


def make_app(apps: Path, name: str, key: str | None = None, entry: str | None = None, **kw: Any):
    return WorkerApp(
        key=key or f"{name}@1.0.0",
        root=apps / name / "1.0.0",
        entry=entry or f"{name}_app:app",
        settings=AppSettings(**kw),
    )


def spawned(pool: WorkerPool, key: str | None = None) -> list[int]:
    """The process ids (as the runtime sees them) of every worker the pool started."""
    workers = pool.spawned  # type: ignore[attr-defined]
    return [w.pid for w in workers if w.pid and (key is None or w.app.key == key)]


def descendants(pid: int) -> list[int]:
    """`pid`'s live child processes, their children, and so on."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def client(pool: WorkerPool, app: WorkerApp, root_path: str = "") -> httpx.AsyncClient:
    async def asgi(scope: Scope, receive: Any, send: Any) -> None:
        await pool.handle(app, scope, receive, send)

    transport = httpx.ASGITransport(app=asgi, root_path=root_path)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://apps.test", timeout=30)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def real_server(pool: Any, apps: Path, **settings: Any) -> AsyncIterator[int]:
    """Hypercorn on 127.0.0.1 serving /<name>/... from `pool` (a `WorkerPool` or a
    `SharedPool`), like the app router."""
    names = ("echo", "stream", "faulty", "broken")
    served = {name: make_app(apps, name, **settings) for name in names}

    async def router(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        name = scope["path"].split("/")[1]
        rest = scope["path"][len(name) + 1 :] or "/"
        scope = {**scope, "root_path": f"/{name}", "path": rest, "raw_path": rest.encode()}
        await pool.handle(served[name], scope, receive, send)

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.create_task(serve(router, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        stop.set()
        await task
