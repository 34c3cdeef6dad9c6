"""The routes agents call with their token (`X-Agent-Token`) to run the deployment tasks
of the targets assigned to them: claim a task, fetch an archive, report the result."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from courtyard_sdk import Blueprint, Response, allow_without_origin
from courtyard_sdk.openapi import errors, responds
from pydantic import Field as Spec
from quart_schema import document_request
from sqlalchemy import update
from sqlmodel import select

from .agents import authenticated_agent
from .blobs import BlobStore
from .common import Api, Body, answers, blueprint, body, loads
from .connection import opened
from .deploy import finish_if_done, record_task, replaced_versions
from .deployments import task_data
from .envelope import ReleasesError, conflict, no_content, not_found, now_text, ok
from .tables import Deployment, DeploymentTask, Release, Sticker, Target

MAX_INSTALLED = 100


class TaskResult(Body):
    """What an agent reports of a task it ran."""

    status: Literal["succeeded", "failed"]
    logs: str = Spec(default="", max_length=256 * 1024)
    error: str = Spec(default="", max_length=2000)
    installed: list[dict[str, Any]] = Spec(default_factory=list, max_length=MAX_INSTALLED)


async def _claimed(session: Any, agent_id: str, task_id: str) -> tuple[DeploymentTask, Target]:
    """A task of a target of this agent; 404 otherwise."""
    task = await session.get(DeploymentTask, task_id)
    target = None if task is None else await session.get(Target, task.target_id)
    if task is None or target is None or target.agent_id != agent_id:
        raise not_found("deployment_task", task_id)
    return task, target


def routes(api: Api, blobs: BlobStore) -> Blueprint:
    """The agents' task routes."""
    bp = blueprint("agent_tasks")

    @bp.post("/agents/<agent_id>/tasks/claim")
    @allow_without_origin
    @answers(200, "The task claimed, with the release and the target's connection")
    @responds(204, "No task is waiting for this agent", media_type=None)
    @errors((401, "INVALID_AGENT_TOKEN"))
    async def claim(agent_id: str) -> Response:
        agent = await authenticated_agent(api, agent_id)
        async with api.session_for(agent.tenant_id) as session:
            waiting = (
                await session.exec(
                    select(DeploymentTask, Deployment)
                    .join(Target, Target.id == DeploymentTask.target_id)
                    .join(Deployment, Deployment.id == DeploymentTask.job_id)
                    .where(
                        Target.agent_id == agent.id,
                        DeploymentTask.status == "pending",
                        Deployment.status == "running",
                    )
                    .order_by(Deployment.created_at)
                )
            ).all()
            for task, job in waiting:
                taken = await session.exec(
                    update(DeploymentTask)  # type: ignore[call-overload]
                    .where(DeploymentTask.id == task.id, DeploymentTask.status == "pending")
                    .values(status="running", started_at=now_text())
                )
                if taken.rowcount != 1:
                    continue  # another poll of the agent took it
                payload = await _payload(api, session, task.id, job)  # before the commit:
                await session.commit()  # a task whose payload fails stays pending
                await api.audit("deployment_task.claimed", task.id, agentId=agent.id)
                return ok(payload)
        return no_content()

    @bp.get("/agents/<agent_id>/tasks/<task_id>/archives/<version_id>")
    @allow_without_origin
    @responds(200, "The archive", media_type="application/octet-stream")
    @errors((401, "INVALID_AGENT_TOKEN"), (404, "ARCHIVE_NOT_FOUND"))
    async def archive(agent_id: str, task_id: str, version_id: str) -> Response:
        agent = await authenticated_agent(api, agent_id)
        async with api.session_for(agent.tenant_id) as session:
            task, _ = await _claimed(session, agent.id, task_id)
            job = await session.get(Deployment, task.job_id)
            release = await session.get(Release, job.release_id)
        for component in loads(release.components):
            if component["versionId"] == version_id and component.get("archiveFormat"):
                path = blobs.path(component["digest"])
                if path.exists():
                    data = await asyncio.to_thread(path.read_bytes)
                    return Response(data, content_type="application/octet-stream")
        raise not_found("archive", version_id)

    @bp.post("/agents/<agent_id>/tasks/<task_id>/result")
    @allow_without_origin
    @document_request(TaskResult)
    @answers(200, "The task, recorded")
    @errors(
        (401, "INVALID_AGENT_TOKEN"), (404, "DEPLOYMENT_TASK_NOT_FOUND"), (409, "TASK_NOT_RUNNING")
    )
    async def result(agent_id: str, task_id: str) -> Response:
        agent = await authenticated_agent(api, agent_id)
        spec = await body(TaskResult)
        async with api.session_for(agent.tenant_id) as session:
            task, _ = await _claimed(session, agent.id, task_id)
            if task.status != "running":
                raise conflict("TASK_NOT_RUNNING", f"the task is {task.status}")
            job_id = task.job_id
        error = "" if spec.status == "succeeded" else (spec.error or "the agent reported failure")
        await record_task(api, agent.tenant_id, task_id, None, error, spec.logs, spec.installed)
        await api.audit("deployment_task.reported", task_id, agentId=agent.id, status=spec.status)
        await finish_if_done(api, agent.tenant_id, job_id)
        async with api.session_for(agent.tenant_id) as session:
            return ok(task_data(await session.get(DeploymentTask, task_id)))

    return bp


async def _payload(api: Api, session: Any, task_id: str, job: Deployment) -> dict[str, Any]:
    """What the agent needs to run a task (its target's secrets included: the agent is
    the one that deploys)."""
    task = await session.get(DeploymentTask, task_id)
    target = await session.get(Target, task.target_id)
    release = await session.get(Release, job.release_id)
    try:
        connection = opened(target.connection, api.sealer)
    except ValueError:
        raise ReleasesError(
            422, "TARGET_SECRETS_UNREADABLE", "the target's secrets cannot be read"
        ) from None
    previous = (
        await session.exec(
            select(Sticker)
            .where(Sticker.target_id == target.id)
            .order_by(Sticker.deployed_at.desc())
            .limit(1)
        )
    ).first()
    return {
        "task": task_data(task),
        "job": {"id": job.id, "kind": job.kind},
        "release": {"id": release.id, "name": release.name},
        "components": loads(release.components),
        "target": {
            "id": target.id,
            "name": target.name,
            "type": target.type,
            "connection": connection,
        },
        "replaced": replaced_versions(job.kind, previous),
    }
