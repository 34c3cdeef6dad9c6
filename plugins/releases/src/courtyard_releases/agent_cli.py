"""`courtyard releases-agent`: the deployment agent. It needs no inbound port: it sends
heartbeats, claims the tasks of the targets assigned to it, runs them with the same
installers as the server (a Courtyard server's apps API, or a deploy script), and reports
each result."""

from __future__ import annotations

import asyncio
import platform
from typing import Any

import click
import httpx

from . import installers

PREFIX = "/api/v1/agents"


class Agent:
    """One agent's conversation with the orchestrator."""

    def __init__(self, client: httpx.AsyncClient, agent_id: str, token: str) -> None:
        self.client = client
        self.agent_id = agent_id
        self.headers = {"X-Agent-Token": token}

    async def heartbeat(self, running: int) -> None:
        """Say the agent is alive, and how busy."""
        answer = await self.client.post(
            f"{PREFIX}/{self.agent_id}/heartbeat",
            headers=self.headers,
            json={
                "capabilities": ["deploy", "courtyard", "script"],
                "load": {"tasks": running},
                "version": f"python-{platform.python_version()}",
            },
        )
        answer.raise_for_status()

    async def work_once(self) -> bool:
        """Claim one task and run it; False when none was waiting."""
        answer = await self.client.post(
            f"{PREFIX}/{self.agent_id}/tasks/claim", headers=self.headers
        )
        answer.raise_for_status()
        if answer.status_code == 204:
            return False
        await self.run(answer.json()["data"])
        return True

    async def _archive(self, task_id: str, component: dict[str, Any]) -> bytes:
        answer = await self.client.get(
            f"{PREFIX}/{self.agent_id}/tasks/{task_id}/archives/{component['versionId']}",
            headers=self.headers,
        )
        if answer.status_code != 200:
            raise installers.InstallError(f"archive of {component['name']}: {answer.status_code}")
        return answer.content

    async def run(self, work: dict[str, Any]) -> None:
        """Run a claimed task and report it."""
        task_id = work["task"]["id"]
        target, log = work["target"], installers.Log()
        installed: list[dict[str, Any]] = []
        error = ""
        try:
            if target["type"] == "courtyard":

                async def fetch(component: dict[str, Any]) -> bytes:
                    return await self._archive(task_id, component)

                installed = await installers.courtyard(
                    target["connection"], work["components"], fetch, log, work["replaced"]
                )
            else:
                installed = await installers.script(
                    target["connection"], work["components"], work["release"], log
                )
        except (installers.InstallError, OSError, httpx.HTTPError) as exc:
            error = str(exc)[:2000] or type(exc).__name__
            log.write(f"failed: {error}")
        answer = await self.client.post(
            f"{PREFIX}/{self.agent_id}/tasks/{task_id}/result",
            headers=self.headers,
            json={
                "status": "failed" if error else "succeeded",
                "logs": log.text(),
                "error": error,
                "installed": installed,
            },
        )
        answer.raise_for_status()


async def serve(url: str, agent_id: str, token: str, interval: float, once: bool) -> None:
    """Heartbeat and work until interrupted (or, with `once`, until no task waits)."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        agent = Agent(client, agent_id, token)
        while True:
            await agent.heartbeat(0)
            while await agent.work_once():
                pass
            if once:
                return
            await asyncio.sleep(interval)


@click.command("releases-agent")
@click.option("--server", "url", required=True, help="The orchestrator's URL.")
@click.option("--agent-id", required=True, help="The id POST /api/v1/agents/register gave.")
@click.option(
    "--token",
    envvar="RELEASES_AGENT_TOKEN",
    required=True,
    help="The agent's token (or RELEASES_AGENT_TOKEN).",
)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Run the waiting tasks, then stop.")
def agent_command(url: str, agent_id: str, token: str, interval: float, once: bool) -> None:
    """Run the deployment tasks of the targets assigned to this agent."""
    try:
        asyncio.run(serve(url.rstrip("/"), agent_id, token, interval, once))
    except KeyboardInterrupt:
        pass
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
