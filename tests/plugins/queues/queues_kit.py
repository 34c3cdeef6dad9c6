"""Shared set-up of the queues tests: a runqy configuration, a runtime started with the
queues plugin on the backend under test, and a small client of the worker protocol
(driven over HTTP, as the real worker does)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CONFIG = """
queues:
  inference:
    sub_queues:
      - {name: high, priority: 6}
      - {name: low, priority: 3}
    deployment:
      git_url: https://example.invalid/inference.git
      branch: main
      startup_cmd: python main.py
      startup_timeout_secs: 300
      requirements_file: requirements.txt
  strict:
    strict_priority: true
    sub_queues:
      - {name: high, priority: 10}
      - {name: low, priority: 1}
    deployment:
      git_url: https://example.invalid/strict.git
      startup_cmd: python main.py
  simple:
    priority: 3
    mode: one_shot
    deployment:
      git_url: https://example.invalid/simple.git
      startup_cmd: python task.py
      limits:
        max_retry: 2
  typed:
    priority: 1
    deployment:
      git_url: https://example.invalid/typed.git
      startup_cmd: python main.py
    input:
      - {name: prompt, type: [string]}
      - {name: width, type: [int], required: false, default: 512}
    output:
      - {name: image, type: [string]}
"""

# Fast clocks, so that leases, retries and sweeps happen within a test.
FAST = {
    "lease_seconds": 1,
    "poll_seconds": 0.05,
    "sweep_seconds": 0.05,
    "heartbeat_seconds": 0.2,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 1,
}


def write_config(folder: Path, text: str = CONFIG, name: str = "queues.yaml") -> Path:
    """Write a runqy YAML file into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Backend:
    """The settings that put the runtime and the queues plugin on one backend."""

    name: str
    runtime: dict[str, Any] = field(default_factory=dict)
    plugin: dict[str, Any] = field(default_factory=dict)


@dataclass
class Worker:
    """One worker of the worker protocol, over an HTTP client."""

    client: httpx.AsyncClient
    worker_id: str
    queue: str

    async def register(self) -> httpx.Response:
        return await self.client.post(
            "/worker/register", json={"worker_id": self.worker_id, "queue": self.queue}
        )

    async def dequeue(self, wait: float = 0) -> dict[str, Any] | None:
        answer = await self.client.post(
            "/worker/dequeue",
            json={"worker_id": self.worker_id, "queue": self.queue, "wait": wait},
        )
        if answer.status_code == 204:
            return None
        assert answer.status_code == 200, answer.text
        return answer.json()["task"]

    async def call(self, task_id: str, action: str, **body: Any) -> httpx.Response:
        return await self.client.post(
            f"/worker/tasks/{task_id}/{action}", json={"worker_id": self.worker_id, **body}
        )


async def enqueue(client: httpx.AsyncClient, queue: str, data: Any = None, **extra: Any) -> str:
    """POST /queue/add and return the task id."""
    answer = await client.post(
        "/queue/add", json={"queue": queue, "data": data or {"n": 1}, **extra}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["info"]["id"]


async def task_info(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """GET /queue/{task_id}'s `info`."""
    answer = await client.get(f"/queue/{task_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["info"]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.05
) -> None:
    """Wait until `check()` is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


async def state_of(client: httpx.AsyncClient, task_id: str) -> str:
    """The task's state."""
    return (await task_info(client, task_id))["state"]


def new_worker(client: httpx.AsyncClient, queue: str) -> Worker:
    """A worker with a fresh id."""
    return Worker(client, f"w-{uuid.uuid4().hex[:8]}", queue)
