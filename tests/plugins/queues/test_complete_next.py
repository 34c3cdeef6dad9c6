"""A completion that leases the next task (`next_queue`): one request per task for a busy
worker. On every backend through the routes, and through the worker's own client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from courtyard.testing import Server
from courtyard_queues.worker.client import LeaseLost, WorkerClient
from queues_kit import enqueue, new_worker, task_info


async def test_a_completion_leases_the_next_task(queues):
    rt = await queues(lease_seconds=30)
    first = await enqueue(rt.client, "simple", {"n": 1})
    second = await enqueue(rt.client, "simple", {"n": 2})
    worker = new_worker(rt.client, "simple")
    other = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["task_id"] == first

    done = await worker.call(first, "complete", result={"r": 1}, next_queue="simple")
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["state"] == "completed"
    leased = body["next"]
    assert leased["task_id"] == second and leased["payload"] == {"n": 2}
    assert leased["queue"] == "simple.default" and leased["retry_count"] == 0
    assert leased["lease_expires_at"] > time.time()
    assert (await task_info(rt.client, first))["state"] == "completed"
    assert (await task_info(rt.client, second))["state"] == "active"
    # The next task is this worker's: another one cannot report it.
    stolen = await other.call(second, "complete", result=None)
    assert stolen.status_code == 409 and stolen.json()["error"]["code"] == "LEASE_LOST"

    # Nothing left: `next` is null, at once (no long poll).
    started = time.monotonic()
    last = await worker.call(second, "complete", result={"r": 2}, next_queue="simple")
    assert last.status_code == 200 and last.json() == {"state": "completed", "next": None}
    assert time.monotonic() - started < 1
    assert (await task_info(rt.client, second))["state"] == "completed"


async def test_without_next_queue_the_answer_is_unchanged_and_pause_holds(queues):
    rt = await queues(lease_seconds=30)
    first = await enqueue(rt.client, "simple", {"n": 1})
    second = await enqueue(rt.client, "simple", {"n": 2})
    worker = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["task_id"] == first
    assert (await rt.client.post("/api/cli/queues/simple.default/pause")).status_code == 200

    done = await worker.call(first, "complete", result=None, next_queue="simple")
    assert done.json() == {"state": "completed", "next": None}  # paused: nothing leased
    assert (await task_info(rt.client, second))["state"] == "pending"

    assert (await rt.client.post("/api/cli/queues/simple.default/unpause")).status_code == 200
    assert (await worker.dequeue())["task_id"] == second
    plain = await worker.call(second, "complete", result=None)
    assert plain.json() == {"state": "completed"}


async def test_an_unknown_next_queue_still_records_the_completion(queues):
    rt = await queues(lease_seconds=30)
    first = await enqueue(rt.client, "simple", {"n": 1})
    worker = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["task_id"] == first
    done = await worker.call(first, "complete", result=None, next_queue="no-such-queue")
    assert done.status_code == 200 and done.json() == {"state": "completed", "next": None}
    assert (await task_info(rt.client, first))["state"] == "completed"
    bad = await worker.call(first, "complete", result=None, next_queue="")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "VALIDATION_ERROR"


KEY = "complete-next-runqy-key"
CONFIG = """
queues:
  jobs:
    priority: 1
    deployment:
      git_url: /somewhere/repo.git
      startup_cmd: python tasks.py
"""


@pytest.fixture
async def client(
    courtyard_server: Callable[..., Server], tmp_path: Path
) -> AsyncIterator[WorkerClient]:
    config = tmp_path / "queues.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    server = courtyard_server(
        only_plugins=["queues"],
        plugins={"queues": {"config_files": [str(config)]}},
        env={"RUNQY_API_KEY": KEY},
    )
    worker = WorkerClient(server.url, KEY, "complete-next-worker")
    yield worker
    await worker.close()


async def test_the_worker_client_gets_the_next_task(client: WorkerClient) -> None:
    soon = time.monotonic() + 10
    ids = []
    for n in range(2):
        answer = await client.call("/queue/add", {"queue": "jobs", "data": {"n": n}}, deadline=soon)
        ids.append(answer.json()["info"]["id"])
    task = await client.dequeue("jobs", 0, deadline=soon)
    assert task is not None and task.task_id == ids[0]
    following = await client.complete(ids[0], {"ok": 0}, deadline=soon, next_queue="jobs")
    assert following is not None and following.task_id == ids[1]
    assert following.payload == {"n": 1} and following.queue == "jobs.default"
    assert await client.complete(ids[1], {"ok": 1}, deadline=soon, next_queue="jobs") is None
    with pytest.raises(LeaseLost):  # completed once: a second report is refused
        await client.complete(ids[1], {"ok": 1}, deadline=soon)
    assert await client.dequeue("jobs", 0, deadline=soon) is None
