"""Crashes between the database and the queue, and reloads: the maintenance pass and a
new generation pick up where the previous one stopped."""

from __future__ import annotations

from typing import Any

from platform_kit import SPEC, assert_done, register, spec, wait_op

QUEUE = "/api/cli/queues/platform.pipeline"


async def test_an_operation_whose_first_task_was_lost_is_started(platform: Any) -> None:
    # As if the instance died between accepting the operation and enqueueing its first
    # step: the operation holds its project's lock, and no task exists for it.
    rt = await platform(wait_seconds=0)
    first = (await rt.client.post("/api/projects", json=spec(name="warm-up"))).json()
    assert_done(await wait_op(rt.client, first["status"]["last_op_id"]))  # the queue exists
    assert (await rt.client.post(f"{QUEUE}/pause")).status_code == 200
    project = (await rt.client.post("/api/projects", json=SPEC)).json()
    (task,) = (await rt.client.get(f"{QUEUE}/tasks", params={"state": "pending"})).json()["tasks"]
    deleted = await rt.client.delete(f"{QUEUE}/tasks/{task['id']}")
    assert deleted.status_code == 200, deleted.text
    await rt.client.post(f"{QUEUE}/unpause")
    op = await wait_op(rt.client, project["status"]["last_op_id"])
    assert_done(op)


async def test_the_pipeline_goes_on_across_a_reload(platform: Any) -> None:
    rt = await platform()
    before = await register(rt.client)
    answer = await rt.reload()
    assert answer.status_code == 200, answer.text
    after = await rt.client.post(
        "/api/webhooks/source",
        json={"project_id": before["project"]["id"], "branch": "main", "commit": "c1"},
    )
    assert after.json()["accepted"] is True
    assert_done(await wait_op(rt.client, after.json()["op"]["id"]))
    other = await register(rt.client, spec(name="after-reload"))
    assert_done(other["final"])
