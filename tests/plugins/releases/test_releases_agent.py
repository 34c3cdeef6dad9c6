"""Deployments run by an agent: it claims the tasks of its targets, fetches archives,
installs, and reports; other agents see none of it."""

from __future__ import annotations

import asyncio

import httpx
from courtyard_releases.agent_cli import Agent
from releases_kit import (
    app_component,
    archive,
    data,
    environment,
    error,
    fake_courtyard,
    finished_job,
    promote,
    upload,
)


async def test_an_agent_runs_the_tasks_of_its_targets(releases):
    alice = releases.user("alice")
    dev = await environment(alice, "dev")
    agent = data(await alice.post("/api/v1/agents/register", json={"name": "edge-agent"}), 201)
    other = data(await alice.post("/api/v1/agents/register", json={"name": "other"}), 201)
    shop = await app_component(alice)
    await upload(alice, shop["id"], "1.0.0", "served by the agent")
    release = data(await alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})
    transport = httpx.ASGITransport(app=releases.runtime.dispatcher)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as bare:
        worker = Agent(bare, agent["id"], agent["token"])
        stranger = Agent(bare, other["id"], other["token"])
        with fake_courtyard() as server:
            target = data(
                await alice.post(
                    "/api/v1/targets",
                    json={
                        "name": "edge",
                        "type": "courtyard",
                        "environmentId": dev["id"],
                        "agentId": agent["id"],
                        "connection": {"url": server.url, "apiKey": "k" * 24},
                    },
                ),
                201,
            )
            assert target["agentId"] == agent["id"]
            promotion = data(await promote(alice, release["id"], dev["id"]), 201)
            jobs = data(await alice.get("/api/v1/deployment-jobs"))
            job_id = jobs[0]["id"]
            for _ in range(50):  # the server starts the job, and leaves the task to the agent
                job = data(await alice.get(f"/api/v1/deployment-jobs/{job_id}"))
                if job["status"] == "running":
                    break
                await asyncio.sleep(0.02)
            assert job["tasks"][0]["status"] == "pending"
            assert server.uploads == []

            assert await stranger.work_once() is False
            task_id = job["tasks"][0]["id"]
            error(
                await bare.post(
                    f"/api/v1/agents/{other['id']}/tasks/{task_id}/result",
                    headers=stranger.headers,
                    json={"status": "succeeded"},
                ),
                404,
                "DEPLOYMENT_TASK_NOT_FOUND",
            )
            error(
                await bare.post(
                    f"/api/v1/agents/{agent['id']}/tasks/claim",
                    headers=stranger.headers,
                ),
                401,
                "INVALID_AGENT_TOKEN",
            )
            await worker.heartbeat(1)
            assert await worker.work_once() is True
            assert await worker.work_once() is False
            assert archive("served by the agent", "1.0.0") in server.uploads[0]
            assert len(server.uploads) == 1

        job = await finished_job(alice, promotion["id"])
        assert job["status"] == "succeeded", job
        sticker = data(await alice.get(f"/api/v1/targets/{target['id']}/sticker"))
        assert sticker["components"][0]["appVersion"] == "1.0.0"
        assert data(await alice.get(f"/api/v1/promotions/{promotion['id']}"))["status"] == (
            "deployed"
        )
        logs = data(await alice.get(f"/api/v1/deployment-jobs/{job_id}/tasks/{task_id}/logs"))
        assert "POST /api/apps/upload answered 200" in logs["logs"]
        error(
            await bare.post(
                f"/api/v1/agents/{agent['id']}/tasks/{task_id}/result",
                headers=worker.headers,
                json={"status": "failed"},
            ),
            409,
            "TASK_NOT_RUNNING",
        )
        agents = {a["name"]: a for a in data(await alice.get("/api/v1/agents"))}
        assert agents["edge-agent"]["status"] == "online"
        assert agents["edge-agent"]["load"] == {"tasks": 1.0}


async def test_a_failing_agent_task_fails_the_job(releases):
    alice = releases.user("alice")
    dev = await environment(alice, "dev")
    agent = data(await alice.post("/api/v1/agents/register", json={"name": "a"}), 201)
    shop = await app_component(alice)
    await upload(alice, shop["id"], "1.0.0")
    release = data(await alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})
    data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "gone",
                "type": "courtyard",
                "environmentId": dev["id"],
                "agentId": agent["id"],
                "connection": {"url": "http://127.0.0.1:9"},
            },
        ),
        201,
    )
    promotion = data(await promote(alice, release["id"], dev["id"]), 201)
    transport = httpx.ASGITransport(app=releases.runtime.dispatcher)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as bare:
        worker = Agent(bare, agent["id"], agent["token"])
        for _ in range(100):
            if await worker.work_once():
                break
            await asyncio.sleep(0.02)
    job = await finished_job(alice, promotion["id"])
    assert job["status"] == "failed" and "upload failed" in job["tasks"][0]["error"]
    error(await alice.get("/api/v1/targets/nope"), 404, "TARGET_NOT_FOUND")


async def test_an_agent_with_targets_cannot_be_deleted(releases):
    alice = releases.user()
    dev = await environment(alice, "dev")
    agent = data(await alice.post("/api/v1/agents/register", json={"name": "a"}), 201)
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "t",
                "type": "courtyard",
                "environmentId": dev["id"],
                "agentId": agent["id"],
                "connection": {"url": "http://127.0.0.1:9"},
            },
        ),
        201,
    )
    error(await alice.delete(f"/api/v1/agents/{agent['id']}"), 409, "AGENT_IN_USE")
    freed = data(await alice.put(f"/api/v1/targets/{target['id']}", json={"agentId": None}))
    assert freed["agentId"] is None
    data(await alice.delete(f"/api/v1/agents/{agent['id']}"), 204)
    error(
        await alice.put(f"/api/v1/targets/{target['id']}", json={"agentId": "nope"}),
        404,
        "AGENT_NOT_FOUND",
    )
