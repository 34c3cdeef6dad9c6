"""The pipeline on each queue backend and database, shared by several runtime instances,
and a consumer that dies mid-step."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from courtyard_platform import pipeline, steps
from platform_kit import SPEC, assert_done, register, settings, wait_op


async def full_flow(client: Any) -> None:
    """Registration, CI by webhook, deployment and promotion."""
    created = await register(client)
    assert_done(created["final"])
    project_id = created["project"]["id"]
    hook = await client.post(
        "/api/webhooks/source", json={"project_id": project_id, "branch": "main", "commit": "c1"}
    )
    assert hook.status_code == 202 and hook.json()["accepted"]
    assert_done(await wait_op(client, hook.json()["op"]["id"]))
    deployed = await client.post("/api/events/deployment", json={"project_id": project_id})
    assert_done(deployed.json()["final"])
    promoted = await client.post(
        "/api/events/promotion",
        json={"project_id": project_id, "from_env": "dev", "to_env": "staging"},
    )
    assert_done(promoted.json()["final"])
    deployments = promoted.json()["project"]["deployments"]
    assert deployments["staging"]["image"] == deployments["dev"]["image"]


@pytest.fixture(params=["sql-sqlite", "sql-postgresql", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Runtime and queues settings of one backend."""
    if request.param == "sql-sqlite":
        return {"runtime": {}, "queues": {}}
    if request.param == "sql-postgresql":
        return {"runtime": {"database_url": request.getfixturevalue("postgres_url")}, "queues": {}}
    redis = request.getfixturevalue("redis")
    return {
        "runtime": {},
        "queues": {
            "backend": "redis",
            "redis_url": redis.url,
            "redis_prefix": f"test:{uuid.uuid4().hex}",
        },
    }


async def test_the_pipeline_on_each_backend(platform: Any, backend: dict[str, Any]) -> None:
    rt = await platform(queues=backend["queues"], runtime=backend["runtime"])
    await full_flow(rt.client)


async def test_instances_sharing_redis_share_the_work(courtyard: Any, redis: Any) -> None:
    queues = {"backend": "redis", "redis_url": redis.url, "redis_prefix": f"t:{uuid.uuid4().hex}"}
    front = await courtyard(**settings(queues, workers=0))  # accepts, runs nothing
    back = await courtyard(**settings(queues, workers=1))  # same database and data folder
    answer = await register(front.client)
    assert_done(answer["final"])
    consumers = {step["consumer"] for step in answer["final"]["steps"]}
    assert len(consumers) == 1 and consumers != {""}
    op = (await back.client.get(f"/api/ops/{answer['op']['id']}")).json()
    assert op == answer["final"]


async def test_a_consumer_that_dies_mid_step_is_replaced(
    platform: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A consumer that hangs in imageBuilder and stops renewing its lease: to the queues
    # plugin it is a dead worker. Its lease expires, the task goes back, the other
    # consumer runs the step again and the operation completes.
    release = threading.Event()
    hung: list[str] = []
    real_run = steps.run

    def run(worker: str, job: steps.Job) -> steps.Outcome:
        if worker == "imageBuilder" and not hung:
            hung.append(job.op_id)
            release.wait(30)  # then it wakes up and finishes: its result must be dropped
        return real_run(worker, job)

    async def no_renewal(self: Any, task_id: str, worker_id: str) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(steps, "run", run)
    monkeypatch.setattr(pipeline.Pipeline, "_renew", no_renewal)
    rt = await platform(workers=2)
    try:
        answer = await register(rt.client)
        final = answer["final"]
        assert_done(final)
        builder = next(s for s in final["steps"] if s["worker"] == "imageBuilder")
        assert builder["attempts"] == 2
        assert hung == [final["id"]]
    finally:
        release.set()
    for _ in range(100):
        if "result dropped" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "lease of" in caplog.text and "result dropped" in caplog.text
    after = (await rt.client.get(f"/api/ops/{final['id']}")).json()
    assert after["status"] == "done" and after["steps"] == final["steps"]


async def test_a_step_that_keeps_failing_fails_its_operation(
    platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(worker: str, job: steps.Job) -> steps.Outcome:
        raise OSError("disk on fire")

    monkeypatch.setattr(steps, "run", broken)
    rt = await platform(max_retry=1)
    final = (await register(rt.client))["final"]
    assert final["status"] == "error"
    assert "disk on fire" in final["error"]
    assert final["steps"][0]["attempts"] == 2
    assert [s["status"] for s in final["steps"]] == ["error", "skipped", "skipped", "skipped"]
    project = (await rt.client.get(f"/api/projects/{final['project_id']}")).json()
    assert project["status"]["phase"] == "Error"
    # The lock is free again: the project can be fixed or removed.
    monkeypatch.undo()
    again = await rt.client.post(
        "/api/events/registration",
        json={"action": "update", "project_id": final["project_id"], "spec": SPEC},
    )
    assert again.status_code == 200
