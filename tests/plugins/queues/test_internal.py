"""Internal queues (`Queues.internal`): another plugin's own work, leased in process with
the queues plugin's leases, retries and uniqueness, on every backend."""

from __future__ import annotations

import asyncio
import time

import pytest
from courtyard_queues.internal import InternalQueue
from courtyard_sdk import ApiError


async def internal(rt, name: str = "notes.jobs") -> InternalQueue:
    return rt.dispatcher.current.record("queues").service.internal(name)


async def test_enqueue_lease_complete_and_uniqueness(queues):
    rt = await queues()
    queue = await internal(rt)
    made = await queue.enqueue({"n": 1}, type="job", unique_key="k1")
    assert made is not None and made.queue == "notes.jobs"
    assert await queue.enqueue({"n": 2}, unique_key="k1") is None  # held by the first
    task = await queue.lease("c1", wait=0)
    assert task is not None and task.id == made.id and task.payload == {"n": 1}
    assert await queue.lease("c2", wait=0) is None  # leased: nobody else gets it
    await queue.renew(task.id, "c1")
    with pytest.raises(ApiError) as lost:
        await queue.complete(task.id, "c2")
    assert lost.value.status == 409
    done = await queue.complete(task.id, "c1", {"ok": True})
    assert done.state == "completed"
    assert (await queue.get(task.id)).state == "completed"


async def test_a_failed_run_is_retried_then_archived_and_a_release_is_not_a_retry(queues):
    rt = await queues()
    queue = await internal(rt)
    made = await queue.enqueue({}, max_retry=1)
    first = await queue.lease("c1", wait=0)
    assert (await queue.release(first.id, "c1")).retry_count == 0
    again = await queue.lease("c1", wait=5)  # released: at once
    assert (await queue.fail(again.id, "c1", "boom")).state == "retry"
    retried = await queue.lease("c1", wait=5)  # after the (fast) backoff
    assert retried is not None and retried.id == made.id
    assert (await queue.fail(retried.id, "c1", "boom again")).state == "archived"


async def test_a_waiting_lease_wakes_at_an_enqueue_and_runqy_queues_stay_apart(queues):
    rt = await queues()
    queue = await internal(rt)
    waiting = asyncio.create_task(queue.lease("c1", wait=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    made = await queue.enqueue({"x": 1})
    assert (await waiting).id == made.id
    assert time.monotonic() - started < 2
    other = await (await internal(rt, "notes.other")).enqueue({})
    assert await queue.get(other.id) is None  # another queue's task is not this one's
    with pytest.raises(ValueError):
        await internal(rt, "nodot")
