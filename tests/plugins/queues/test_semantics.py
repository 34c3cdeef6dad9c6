"""What a task queue promises, on every backend: priorities, pause, cancel, scheduled and
unique tasks, retries with backoff, timeouts, leases, retention, atomic dequeue."""

from __future__ import annotations

import asyncio
import time

from queues_kit import enqueue, eventually, new_worker, state_of, task_info


async def test_strict_priority_serves_the_higher_sub_queue_first(queues):
    rt = await queues()
    low = [await enqueue(rt.client, "strict.low", {"i": i}) for i in range(3)]
    high = [await enqueue(rt.client, "strict.high", {"i": i}) for i in range(3)]
    worker = new_worker(rt.client, "strict")
    order = [(await worker.dequeue())["task_id"] for _ in range(6)]
    assert order == high + low  # and first in, first out within a sub-queue
    assert await worker.dequeue() is None


async def test_weighted_priority_holds_statistically(queues):
    rt = await queues()
    for queue in ("inference.high", "inference.low"):
        answer = await rt.client.post(
            "/queue/add-batch", json={"queue": queue, "jobs": [{"data": {}}] * 400}
        )
        assert answer.json()["enqueued"] == 400
    worker = new_worker(rt.client, "inference")
    picked = [(await worker.dequeue())["queue"] for _ in range(300)]
    share = picked.count("inference.high") / len(picked)
    # Priorities 6 and 3: the high sub-queue comes first 2 times in 3 (sd ~0.027 here).
    assert 0.56 < share < 0.77, share
    # A worker may serve one sub-queue only.
    only_low = new_worker(rt.client, "inference.low")
    assert (await only_low.dequeue())["queue"] == "inference.low"


async def test_pause_stops_dequeues_at_once_and_long_polls_resume(queues):
    rt = await queues()
    await rt.client.post("/api/cli/queues/simple/pause")
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    waiting = asyncio.create_task(worker.dequeue(wait=5))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await rt.client.post("/api/cli/queues/simple/unpause")
    task = await asyncio.wait_for(waiting, 5)
    assert task["task_id"] == task_id


async def test_a_long_poll_wakes_on_enqueue_and_gives_up_after_wait(queues):
    rt = await queues(poll_seconds=5)  # so only the enqueue's wake-up can be fast
    worker = new_worker(rt.client, "simple")
    started = time.monotonic()
    assert await worker.dequeue(wait=0.3) is None
    assert 0.25 < time.monotonic() - started < 3
    waiting = asyncio.create_task(worker.dequeue(wait=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task_id = await enqueue(rt.client, "simple")
    assert (await asyncio.wait_for(waiting, 10))["task_id"] == task_id
    assert time.monotonic() - started < 2


async def test_cancel_an_active_task(queues):
    rt = await queues()
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    await worker.dequeue()
    assert (await worker.call(task_id, "renew")).json()["cancel"] is False
    cancelled = await rt.client.delete(f"/api/cli/tasks/{task_id}")
    assert cancelled.json()["state"] == "active"
    assert (await worker.call(task_id, "renew")).json()["cancel"] is True
    # Whatever the worker reports then, the task ends cancelled, and is not retried.
    failed = await worker.call(task_id, "fail", error="stopped", retry=True)
    assert failed.json() == {"state": "archived"}
    info = await task_info(rt.client, task_id)
    assert info["state"] == "archived" and info["last_err"] == "cancelled"


async def test_a_cancelled_task_whose_worker_vanished_ends_cancelled(queues):
    rt = await queues()
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    await worker.dequeue()
    await rt.client.delete(f"/api/cli/tasks/{task_id}")
    await eventually(lambda: _is(rt, task_id, "archived"), timeout=5)
    assert (await task_info(rt.client, task_id))["last_err"] == "cancelled"
    assert (await worker.call(task_id, "complete", result=1)).status_code == 409


async def test_scheduled_tasks_wait_for_their_time(queues):
    rt = await queues()
    later = await enqueue(rt.client, "simple", process_in=0.8)
    info = await task_info(rt.client, later)
    assert info["state"] == "scheduled" and info["next_process_at"]
    soon = await enqueue(rt.client, "simple", process_at="2000-01-01T00:00:00Z")
    assert await state_of(rt.client, soon) == "pending"
    worker = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["task_id"] == soon
    assert await worker.dequeue() is None
    started = time.monotonic()
    task = await worker.dequeue(wait=5)
    assert task is not None and task["task_id"] == later
    assert time.monotonic() - started < 3
    for bad in ({"process_at": "tomorrow"}, {"process_at": "2030-01-01T00:00:00"}):
        refused = await rt.client.post("/queue/add", json={"queue": "simple", "data": {}, **bad})
        assert refused.status_code == 400
    both = await rt.client.post(
        "/queue/add", json={"queue": "simple", "data": {}, "process_at": 1, "process_in": 1}
    )
    assert both.status_code == 400


async def test_unique_tasks(queues):
    rt = await queues()
    first = await enqueue(rt.client, "simple", {"a": 1}, unique_key="report-42")
    again = await rt.client.post(
        "/queue/add", json={"queue": "simple", "data": {"a": 2}, "unique_key": "report-42"}
    )
    assert again.status_code == 409
    assert (
        again.json()["error"]["code"] == "DUPLICATE_TASK"
        and first in again.json()["error"]["message"]
    )
    # By payload: the same payload twice is refused, another one is not.
    await enqueue(rt.client, "simple", {"b": 1}, unique=True)
    dup = await rt.client.post(
        "/queue/add", json={"queue": "simple", "data": {"b": 1}, "unique": True}
    )
    assert dup.status_code == 409
    await enqueue(rt.client, "simple", {"b": 2}, unique=True)
    # The key is free again once the task completes.
    worker = new_worker(rt.client, "simple")
    task = await worker.dequeue()
    assert task["task_id"] == first
    await worker.call(first, "complete", result=None)
    await enqueue(rt.client, "simple", {"a": 3}, unique_key="report-42")
    # ... or once its time to live runs out.
    await enqueue(rt.client, "simple", unique_key="brief", unique_ttl=0.3)
    await asyncio.sleep(0.5)
    await enqueue(rt.client, "simple", unique_key="brief", unique_ttl=0.3)
    # In a batch, the second of two jobs with one key is refused.
    batch = await rt.client.post(
        "/queue/add-batch",
        json={
            "queue": "simple",
            "jobs": [{"data": {}, "unique_key": "b"}, {"data": {}, "unique_key": "b"}],
        },
    )
    assert batch.json()["enqueued"] == 1 and batch.json()["failed"] == 1


async def test_retries_back_off_then_archive(queues):
    rt = await queues(retry_base_seconds=0.3, retry_max_seconds=5)
    task_id = await enqueue(rt.client, "simple")  # simple: max_retry 2 (its limits)
    worker = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["max_retry"] == 2
    failed = await worker.call(task_id, "fail", error="boom", retry=True)
    assert failed.json() == {"state": "retry"}
    info = await task_info(rt.client, task_id)
    assert info["retried"] == 1 and info["last_err"] == "boom" and info["next_process_at"]
    assert await worker.dequeue() is None  # the backoff: not yet
    task = await worker.dequeue(wait=5)
    assert task["task_id"] == task_id and task["retry_count"] == 1
    assert (await worker.call(task_id, "fail", error="boom 2")).json() == {"state": "retry"}
    task = await worker.dequeue(wait=5)
    assert task["retry_count"] == 2
    # Out of retries: archived.
    assert (await worker.call(task_id, "fail", error="boom 3")).json() == {"state": "archived"}
    info = await task_info(rt.client, task_id)
    assert info["state"] == "archived" and info["retried"] == 2 and info["last_err"] == "boom 3"
    stats = (await rt.client.get("/api/cli/queues/simple")).json()
    assert stats["processed"] == 3 and stats["failed"] == 3 and stats["archived"] == 1

    # retry: false archives at once; a per-task max_retry overrides the queue's.
    other = await enqueue(rt.client, "simple", max_retry=0)
    task = await worker.dequeue()
    assert task["task_id"] == other and task["max_retry"] == 0
    assert (await worker.call(other, "fail", error="fatal", retry=True)).json()[
        "state"
    ] == "archived"
    third = await enqueue(rt.client, "simple")
    await worker.dequeue()
    assert (await worker.call(third, "fail", error="bad input", retry=False)).json() == {
        "state": "archived"
    }


async def test_timeouts_fail_the_run(queues):
    rt = await queues(retry_base_seconds=0)
    task_id = await enqueue(rt.client, "simple", timeout=0.3)
    worker = new_worker(rt.client, "simple")
    task = await worker.dequeue()
    assert task["timeout"] == 0.3
    await asyncio.sleep(0.5)
    await worker.call(task_id, "renew")  # renewing does not extend the deadline
    await eventually(lambda: _retried(rt, task_id))
    info = await task_info(rt.client, task_id)
    assert info["last_err"].startswith("timeout")
    late = await worker.call(task_id, "complete", result=1)
    assert late.status_code == 409 and late.json()["error"]["code"] == "LEASE_LOST"


async def test_an_expired_lease_puts_the_task_back(queues):
    rt = await queues()  # lease: 1 s
    task_id = await enqueue(rt.client, "simple")
    crashed = new_worker(rt.client, "simple")
    await crashed.dequeue()
    other = new_worker(rt.client, "simple")
    task = await other.dequeue(wait=5)
    assert task is not None and task["task_id"] == task_id and task["retry_count"] == 1
    info = await task_info(rt.client, task_id)
    assert info["last_err"].startswith("lease expired")
    for action, body in (("complete", {"result": 1}), ("renew", {}), ("release", {})):
        lost = await crashed.call(task_id, action, **body)
        assert lost.status_code == 409 and lost.json()["error"]["code"] == "LEASE_LOST"
    assert (await other.call(task_id, "complete", result="ok")).status_code == 200
    missing = await other.call("00000000-0000-4000-8000-000000000000", "renew")
    assert missing.status_code == 404


async def test_renewing_keeps_the_lease(queues):
    rt = await queues()
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    first = await worker.dequeue()
    for _ in range(4):
        await asyncio.sleep(0.4)
        renewed = (await worker.call(task_id, "renew")).json()
        assert renewed["lease_expires_at"] > first["lease_expires_at"]
    assert await state_of(rt.client, task_id) == "active"
    assert (await worker.call(task_id, "complete", result=1)).status_code == 200


async def test_release_hands_the_task_back_first_in_line(queues):
    rt = await queues()
    first = await enqueue(rt.client, "simple", {"i": 1})
    second = await enqueue(rt.client, "simple", {"i": 2})
    worker = new_worker(rt.client, "simple")
    assert (await worker.dequeue())["task_id"] == first
    released = await worker.call(first, "release")
    assert released.json() == {"state": "pending"}
    task = await worker.dequeue()
    assert task["task_id"] == first and task["retry_count"] == 0
    assert (await worker.dequeue())["task_id"] == second


async def test_results_and_failures_are_kept_for_their_retention(queues):
    rt = await queues(retention_seconds=0.4, archived_retention_seconds=0.4)
    done = await enqueue(rt.client, "simple")
    kept = await enqueue(rt.client, "simple", retention=0)  # 0: forever
    failed = await enqueue(rt.client, "simple", max_retry=0)
    worker = new_worker(rt.client, "simple")
    for _ in range(3):
        task = await worker.dequeue()
        if task["task_id"] == failed:
            await worker.call(failed, "fail", error="x")
        else:
            await worker.call(task["task_id"], "complete", result={"r": 1})
    assert await state_of(rt.client, done) == "completed"
    await eventually(lambda: _gone(rt, done))
    await eventually(lambda: _gone(rt, failed))
    await asyncio.sleep(0.3)
    assert await state_of(rt.client, kept) == "completed"
    stats = (await rt.client.get("/api/cli/queues/simple")).json()
    assert stats["completed"] == 1 and stats["archived"] == 0


async def test_pending_timeout_archives_tasks_no_worker_took(queues, tmp_path):
    from queues_kit import write_config

    path = write_config(
        tmp_path / "stale",
        "queues:\n  stale:\n    priority: 1\n    deployment:\n      git_url: g\n"
        "      startup_cmd: c\n      limits: {pending_timeout: 300ms}\n",
    )
    rt = await queues(config_files=[str(path)])
    task_id = await enqueue(rt.client, "stale")
    await eventually(lambda: _is(rt, task_id, "archived"))
    assert (await task_info(rt.client, task_id))["last_err"].startswith("pending timeout")


async def test_concurrent_dequeues_never_share_a_task(queues):
    rt = await queues(lease_seconds=60)
    count = 120
    answer = await rt.client.post(
        "/queue/add-batch",
        json={"queue": "inference.high", "jobs": [{"data": {"i": i}} for i in range(count)]},
    )
    expected = set(answer.json()["task_ids"])
    low = await rt.client.post(
        "/queue/add-batch",
        json={"queue": "inference.low", "jobs": [{"data": {"i": i}} for i in range(count)]},
    )
    expected |= set(low.json()["task_ids"])

    async def drain(index: int) -> list[str]:
        worker = new_worker(rt.client, "inference")
        got = []
        while (task := await worker.dequeue()) is not None:
            got.append(task["task_id"])
        return got

    results = await asyncio.gather(*(drain(i) for i in range(16)))
    taken = [task_id for batch in results for task_id in batch]
    assert len(taken) == len(set(taken)) == len(expected)
    assert set(taken) == expected
    assert sum(1 for batch in results if batch) > 1


async def test_workers_go_stale_then_disappear(queues):
    rt = await queues(heartbeat_seconds=0.1)  # stale after 0.3 s, removed after 1 s
    worker = new_worker(rt.client, "simple")
    await worker.register()
    await asyncio.sleep(0.5)
    listed = (await rt.client.get("/api/cli/workers")).json()["workers"]
    assert listed[0]["is_stale"] is True
    await rt.client.post("/worker/heartbeat", json={"worker_id": worker.worker_id})
    listed = (await rt.client.get("/api/cli/workers")).json()["workers"]
    assert listed[0]["is_stale"] is False and listed[0]["queues"] == "simple"
    await eventually(lambda: _no_workers(rt), timeout=5)


async def _is(rt, task_id: str, state: str) -> bool:
    return await state_of(rt.client, task_id) == state


async def _retried(rt, task_id: str) -> bool:
    info = await task_info(rt.client, task_id)
    return info["retried"] == 1 and info["state"] in ("retry", "pending")


async def _gone(rt, task_id: str) -> bool:
    return (await rt.client.get(f"/queue/{task_id}")).status_code == 404


async def _no_workers(rt) -> bool:
    return (await rt.client.get("/api/cli/workers")).json()["count"] == 0
