"""Fixtures of the runners tests: `runners` starts a runtime serving only the runners
plugin in process; `live` starts a real server and an agent on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard.testing import Runtime
from runners_kit import FAST, start_agent, stop_agent, wait_for


@pytest.fixture
def runners(courtyard: Any) -> Callable[..., Any]:
    """`rt = await runners(**plugin_settings)`."""

    async def start(runtime: dict[str, Any] | None = None, **settings: Any) -> Runtime:
        plugin = {**FAST, **settings}
        return await courtyard(
            only_plugins=["runners"], plugins={"runners": plugin}, **(runtime or {})
        )

    return start


@dataclass
class Live:
    """A real server, a client on it, and a registered runner with its agent."""

    url: str
    client: httpx.Client
    runner_id: str
    token: str
    agent: Any
    work_dir: Path

    def submit(self, steps: list[dict[str, str]], **fields: Any) -> str:
        """Submit a job; its id."""
        answer = self.client.post(
            f"/api/runners/{self.runner_id}/jobs",
            json={"name": fields.pop("name", "job"), "steps": steps, **fields},
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["job_id"])

    def logs(self, **query: Any) -> list[dict[str, Any]]:
        """The runner's log entries."""
        answer = self.client.get(
            f"/api/runners/{self.runner_id}/logs", params={"limit": 1000, **query}
        )
        return list(answer.json()["logs"])


@pytest.fixture
def live(courtyard_server: Any, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    """`env = live(max_concurrent_jobs=2)`: a server, a native runner and its agent,
    connected (`active`)."""
    agents: list[Any] = []
    clients: list[httpx.Client] = []

    def start(server_settings: dict[str, Any] | None = None, **config: Any) -> Live:
        server = courtyard_server(
            only_plugins=["runners"], plugins={"runners": FAST}, **(server_settings or {})
        )
        client = httpx.Client(base_url=server.url, timeout=30)
        clients.append(client)
        answer = client.post("/api/runners/register", json={"name": "e2e", "type": "native"})
        body = answer.json()
        runner_id, token = body["runner_id"], body["registration_token"]
        if config:
            assert client.put(f"/api/runners/{runner_id}/config", json=config).status_code == 200
        work = tmp_path / "work"
        agent = start_agent(server.url, token, work)
        agents.append(agent)
        wait_for(
            lambda: client.get(f"/api/runners/{runner_id}/status").json()["status"] == "active"
        )
        return Live(server.url, client, runner_id, token, agent, work)

    yield start
    for agent in agents:
        stop_agent(agent)
    for client in clients:
        client.close()


@dataclass
class InProcess:
    """A runtime in process, a registered native runner, and its agent as a task."""

    client: httpx.AsyncClient
    runner_id: str
    token: str
    agent: Any
    task: Any

    @property
    def base(self) -> str:
        """The runner's path."""
        return f"/api/runners/{self.runner_id}"

    async def submit(self, steps: list[dict[str, str]], **fields: Any) -> str:
        """Submit a job; its id."""
        answer = await self.client.post(
            f"{self.base}/jobs", json={"name": fields.pop("name", "job"), "steps": steps, **fields}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it."""
        return dict((await self.client.get(f"{self.base}/jobs/{job_id}")).json())

    async def wait_job(self, job_id: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the job is in one of `states`."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in states:
                return job
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.03)

    async def logs(self, **query: Any) -> list[dict[str, Any]]:
        """The runner's log entries."""
        answer = await self.client.get(f"{self.base}/logs", params={"limit": 1000, **query})
        return list(answer.json()["logs"])

    async def until(self, check: Any, timeout: float = 10.0) -> Any:
        """Await `check()` until it is truthy."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {check}"
            await asyncio.sleep(0.03)


@pytest.fixture
async def agent_env(runners: Any, tmp_path: Path) -> Any:
    """`env = await agent_env(max_concurrent_jobs=2)`: an in-process runtime, a native
    runner configured so, and its agent running in this test's event loop."""
    import asyncio

    from courtyard_runners.agent.agent import Agent

    made: list[InProcess] = []

    async def start(
        settings: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        **config: Any,
    ) -> InProcess:
        rt = await runners(runtime, **(settings or {}))
        answer = await rt.client.post(
            "/api/runners/register", json={"name": "in", "type": "native"}
        )
        runner_id, token = answer.json()["runner_id"], answer.json()["registration_token"]
        if config:
            put = await rt.client.put(f"/api/runners/{runner_id}/config", json=config)
            assert put.status_code == 200, put.text
        agent = Agent(
            "http://localhost",
            token,
            tmp_path / f"work-{len(made)}",
            grace=5,
            transport=rt.client._transport,
            handle_signals=False,
        )
        task = asyncio.ensure_future(agent.run())
        env = InProcess(rt.client, runner_id, token, agent, task)
        made.append(env)
        await env.until(lambda: _status_is(rt.client, runner_id, "active"), timeout=10)
        return env

    yield start
    for env in made:
        env.agent.terminate()
        await asyncio.wait_for(env.task, 20)


async def _status_is(client: Any, runner_id: str, status: str) -> bool:
    answer = await client.get(f"/api/runners/{runner_id}/status")
    return bool(answer.json()["status"] == status)
