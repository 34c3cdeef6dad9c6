"""`POST /worker/batch`: several reports and several leases in one request, on every
backend. Each report is recorded as its own route would record it (a lost lease refuses
that report only), and each lease is the one `POST /worker/dequeue` would make."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from queues_kit import (
    FAST,
    Worker,
    enqueue,
    eventually,
    new_worker,
    state_of,
    task_info,
    write_config,
)


@pytest.fixture
def sqlite_queues(courtyard, tmp_path):
    """A runtime with the queues plugin on SQLite, for what does not depend on the backend."""
    config = write_config(tmp_path / "config")

    async def start(**settings):
        plugin = {"config_files": [str(config)], **FAST, **settings}
        return await courtyard(only_plugins=["queues"], plugins={"queues": plugin})

    return start


async def batch(worker: Worker, **body: Any) -> httpx.Response:
    return await worker.client.post(
        "/worker/batch", json={"worker_id": worker.worker_id, "queue": worker.queue, **body}
    )


async def ok(worker: Worker, **body: Any) -> dict[str, Any]:
    answer = await batch(worker, **body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"reports", "tasks"}
    return dict(data)


async def queue_stats(client: httpx.AsyncClient, queue: str) -> dict[str, Any]:
    answer = await client.get(f"/api/cli/queues/{queue}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_a_batch_records_reports_and_leases_tasks_in_one_request(queues):
    rt = await queues(lease_seconds=30)
    ids = [await enqueue(rt.client, "simple", {"n": n}) for n in range(5)]
    worker = new_worker(rt.client, "simple")
    other = new_worker(rt.client, "simple")

    first = await ok(worker, lease=3)
    assert first["reports"] == []
    leased = first["tasks"]
    assert [t["task_id"] for t in leased] == ids[:3]  # oldest first
    assert [t["payload"] for t in leased] == [{"n": 0}, {"n": 1}, {"n": 2}]
    for task in leased:
        assert task["queue"] == "simple.default" and task["retry_count"] == 0
        assert task["max_retry"] == 2 and task["lease_expires_at"] > time.time() + 20
        assert await state_of(rt.client, task["task_id"]) == "active"

    # Another worker's reports on them are refused one by one; nothing changes.
    stolen = await ok(other, reports=[{"task_id": ids[0], "result": "mine"}])
    assert stolen["reports"][0]["task_id"] == ids[0]
    assert stolen["reports"][0]["error"]["code"] == "LEASE_LOST"
    assert await state_of(rt.client, ids[0]) == "active"

    second = await ok(
        worker,
        reports=[
            {"task_id": ids[0], "result": {"r": 0}},
            {"task_id": ids[1], "error": "bad input", "retry": False},
            {"task_id": ids[2], "error": "busy", "retry": True},
            {"task_id": "no-such-task", "result": 1},
            {"task_id": ids[0], "result": "again"},  # completed already
        ],
        lease=5,
    )
    assert second["reports"][:3] == [
        {"task_id": ids[0], "state": "completed"},
        {"task_id": ids[1], "state": "archived"},
        {"task_id": ids[2], "state": "retry"},
    ]
    assert second["reports"][3]["error"]["code"] == "TASK_NOT_FOUND"
    assert second["reports"][4]["error"]["code"] == "LEASE_LOST"
    assert [t["task_id"] for t in second["tasks"]] == ids[3:]  # what is left: 2 of 5

    done = await task_info(rt.client, ids[0])
    assert done["state"] == "completed" and done["result"] == '{"r":0}'
    archived = await task_info(rt.client, ids[1])
    assert archived["state"] == "archived" and archived["last_err"] == "bad input"
    retried = await task_info(rt.client, ids[2])
    assert retried["retried"] == 1 and retried["last_err"] == "busy"
    stats = await queue_stats(rt.client, "simple.default")
    assert (stats["processed"], stats["failed"], stats["completed"]) == (3, 2, 1)

    # The single-task routes see the batch's leases as their own.
    assert (await worker.call(ids[3], "complete", result=3)).status_code == 200
    assert (await worker.call(ids[4], "renew")).json()["cancel"] is False


async def test_a_batch_waits_for_a_task_only_when_none_is_ready(queues):
    rt = await queues(lease_seconds=30)
    worker = new_worker(rt.client, "simple")

    started = time.monotonic()
    assert await ok(worker, lease=4, wait=0.3) == {"reports": [], "tasks": []}
    assert 0.25 < time.monotonic() - started < 5
    started = time.monotonic()
    assert await ok(worker, lease=0, wait=10) == {"reports": [], "tasks": []}  # no lease
    assert time.monotonic() - started < 2

    waiting = asyncio.create_task(ok(worker, lease=4, wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    task_id = await enqueue(rt.client, "simple")
    answer = await asyncio.wait_for(waiting, 5)
    assert [t["task_id"] for t in answer["tasks"]] == [task_id]

    # Reports are recorded before the wait, whatever it brings.
    started = time.monotonic()
    answer = await ok(worker, reports=[{"task_id": task_id, "result": None}], lease=1, wait=0.3)
    assert answer == {"reports": [{"task_id": task_id, "state": "completed"}], "tasks": []}
    assert await state_of(rt.client, task_id) == "completed"


async def test_a_batch_honours_pauses_and_priorities(queues):
    rt = await queues(lease_seconds=30)
    paused = await enqueue(rt.client, "simple")
    assert (await rt.client.post("/api/cli/queues/simple.default/pause")).status_code == 200
    assert (await ok(new_worker(rt.client, "simple"), lease=3))["tasks"] == []
    assert await state_of(rt.client, paused) == "pending"

    # Strict: the high sub-queue first, the low one only when it is empty.
    low = [await enqueue(rt.client, "strict.low", {"n": n}) for n in range(2)]
    high = [await enqueue(rt.client, "strict.high", {"n": n}) for n in range(2)]
    leased = (await ok(new_worker(rt.client, "strict"), lease=3))["tasks"]
    assert [t["task_id"] for t in leased] == [*high, low[0]]

    # Weighted (6 and 3): each lease draws its own order, so a batch takes from both. The
    # draws are seeded: two thirds of 30 is 20, and unseeded, high <= low came about once
    # in 25 runs; with the seed the test checks the weighting, not its luck.
    random.seed(20261205)
    for n in range(30):
        await enqueue(rt.client, "inference.high", {"n": n})
        await enqueue(rt.client, "inference.low", {"n": n})
    leased = (await ok(new_worker(rt.client, "inference"), lease=30))["tasks"]
    by_queue = Counter(t["queue"] for t in leased)
    assert sum(by_queue.values()) == 30
    assert by_queue["inference.high"] >= 18 and by_queue["inference.low"] > 0, by_queue
    # A single sub-queue of the parent is served alone.
    only_low = (await ok(new_worker(rt.client, "inference.low"), lease=100))["tasks"]
    assert {t["queue"] for t in only_low} == {"inference.low"}
    assert len(only_low) == 30 - by_queue["inference.low"]


async def test_a_batch_lease_expires_and_the_task_comes_back(queues):
    rt = await queues()  # 1 s leases, fast sweeps
    task_id = await enqueue(rt.client, "simple")
    gone = new_worker(rt.client, "simple")
    assert [t["task_id"] for t in (await ok(gone, lease=2))["tasks"]] == [task_id]

    async def back() -> bool:
        return await state_of(rt.client, task_id) in ("pending", "retry")

    await eventually(back)
    info = await task_info(rt.client, task_id)
    assert info["retried"] == 1 and "lease expired" in info["last_err"]
    late = await ok(gone, reports=[{"task_id": task_id, "result": "late"}])
    assert late["reports"][0]["error"]["code"] == "LEASE_LOST"

    fresh = new_worker(rt.client, "simple")
    answer = await ok(fresh, lease=1, wait=5)
    assert [t["task_id"] for t in answer["tasks"]] == [task_id]
    assert answer["tasks"][0]["retry_count"] == 1
    done = await ok(fresh, reports=[{"task_id": task_id, "result": "ok"}])
    assert done["reports"] == [{"task_id": task_id, "state": "completed"}]


async def test_bad_batches_change_nothing(queues):
    rt = await queues(lease_seconds=30)
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    (leased,) = (await ok(worker, lease=1))["tasks"]
    assert leased["task_id"] == task_id
    report = {"task_id": task_id, "result": 1}
    for body in (
        {"lease": 1001},
        {"lease": -1},
        {"lease": "many"},
        {"wait": 31},
        {"reports": [report] * 1001},
        {"reports": [{"result": 1}]},  # no task_id
        {"reports": [{"task_id": task_id, "error": 7}]},
        {"reports": [{"task_id": task_id, "retry": "maybe", "error": "x"}]},
        {"reports": [report, {"task_id": "a\x00b", "result": 1}]},
        {"reports": {"task_id": task_id}},
        {"worker_id": ""},
        {"queue": ""},
    ):
        answer = await batch(worker, **body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    nan = await worker.client.post(
        "/worker/batch",
        content=b'{"worker_id": "%s", "queue": "simple", "reports": [{"task_id": "%s",'
        b' "result": NaN}]}' % (worker.worker_id.encode(), task_id.encode()),
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 400 and nan.json()["error"]["code"] == "VALIDATION_ERROR"
    unknown = await worker.client.post(
        "/worker/batch",
        json={"worker_id": worker.worker_id, "queue": "nope", "reports": [report], "lease": 1},
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "QUEUE_NOT_FOUND"
    # None of them recorded the report.
    assert await state_of(rt.client, task_id) == "active"
    assert (await ok(worker, reports=[report]))["reports"][0]["state"] == "completed"


async def test_batch_completions_are_published_and_documented(sqlite_queues):
    rt = await sqlite_queues()
    bus = rt.dispatcher.services.events
    async with bus.subscribe("queues.task.*") as events:
        done = await enqueue(rt.client, "simple")
        failed = await enqueue(rt.client, "simple", max_retry=0)
        worker = new_worker(rt.client, "simple")
        assert len((await ok(worker, lease=2))["tasks"]) == 2
        await ok(
            worker,
            reports=[{"task_id": done, "result": 1}, {"task_id": failed, "error": "x"}],
        )
        received = [await anext(events) for _ in range(2)]
    assert [(e.topic, e.data) for e in received] == [
        (
            "queues.task.completed",
            {"task_id": done, "queue": "simple.default", "state": "completed"},
        ),
        (
            "queues.task.archived",
            {"task_id": failed, "queue": "simple.default", "state": "archived"},
        ),
    ]

    spec = (await rt.client.get("/api/openapi.json")).json()
    operation = spec["paths"]["/worker/batch"]["post"]
    assert operation["tags"] == ["queues"] and operation["x-permissions"] == ["queues:work"]
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return resolve(schemas[ref.rsplit("/", 1)[1]]) if ref else schema

    request = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    assert {"worker_id", "queue", "reports", "lease", "wait"} <= set(request["properties"])
    answer = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(answer["properties"]) == {"reports", "tasks"}
    task = resolve(answer["properties"]["tasks"]["items"])
    assert {"task_id", "payload", "lease_expires_at"} <= set(task["properties"])
    assert {"400", "404"} <= set(operation["responses"])
    assert "`QUEUE_NOT_FOUND`" in operation["responses"]["404"]["description"]


async def test_concurrent_batches_never_share_a_task(queues):
    rt = await queues(lease_seconds=30)
    answer = await rt.client.post(
        "/queue/add-batch",
        json={"queue": "simple", "jobs": [{"data": {"i": i}} for i in range(90)]},
    )
    expected = set(answer.json()["task_ids"])

    async def drain() -> list[str]:
        worker = new_worker(rt.client, "simple")
        got: list[str] = []
        reports: list[dict[str, Any]] = []
        while True:
            leased = (await ok(worker, reports=reports, lease=7))["tasks"]
            if not leased:
                return got
            got += [task["task_id"] for task in leased]
            reports = [{"task_id": task["task_id"], "result": None} for task in leased]

    batches = await asyncio.gather(*(drain() for _ in range(6)))
    taken = [task_id for batch in batches for task_id in batch]
    assert len(taken) == len(set(taken)) and set(taken) == expected
    # Each drain's last request reported its last tasks (and leased none).
    stats = await queue_stats(rt.client, "simple.default")
    assert (stats["completed"], stats["active"], stats["pending"]) == (90, 0, 0)
