"""DEPLOY: `/api/v1/deployment-jobs...` (read), and `/api/v1/rollbacks`, which redeploys
the release an environment ran before its current one."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlmodel import select

from . import listing
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, listed, loads
from .deploy import Runner, create_job
from .envelope import ReleasesError, created, not_found, ok
from .environments import get_environment
from .listing import Field
from .tables import Deployment, DeploymentTask, Release

FIELDS = [
    Field("status", Deployment.status),
    Field("kind", Deployment.kind),
    Field("releaseId", Deployment.release_id),
    Field("environmentId", Deployment.environment_id),
    Field("promotionId", Deployment.promotion_id),
    Field("createdAt", Deployment.created_at, "datetime"),
    Field("finishedAt", Deployment.finished_at, "datetime"),
]
TASK_FIELDS = [
    Field("status", DeploymentTask.status),
    Field("targetId", DeploymentTask.target_id),
    Field("targetName", DeploymentTask.target_name),
]


class RollbackBody(Body):
    """Put an environment back on the release it ran before."""

    environment_id: str = Spec(min_length=1, max_length=32)
    reason: str = Spec(default="", max_length=1000)


def job_data(job: Deployment) -> dict[str, Any]:
    """A job as answered."""
    return {
        "id": job.id,
        "kind": job.kind,
        "strategy": job.strategy,
        "status": job.status,
        "promotionId": job.promotion_id or None,
        "releaseId": job.release_id,
        "environmentId": job.environment_id,
        "requestedBy": job.requested_by,
        "error": job.error or None,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
    }


def task_data(task: DeploymentTask) -> dict[str, Any]:
    """A task as answered (its log has a route of its own)."""
    return {
        "id": task.id,
        "jobId": task.job_id,
        "targetId": task.target_id,
        "targetName": task.target_name,
        "status": task.status,
        "error": task.error or None,
        "startedAt": task.started_at,
        "finishedAt": task.finished_at,
    }


async def get_job(session: Any, job_id: str) -> Deployment:
    """The tenant's job; 404 `DEPLOYMENT_JOB_NOT_FOUND`."""
    job = await session.get(Deployment, job_id)
    if job is None:
        raise not_found("deployment_job", job_id)
    return job


async def get_task(session: Any, job_id: str, task_id: str) -> DeploymentTask:
    """A task of the job; 404 `DEPLOYMENT_TASK_NOT_FOUND`."""
    task = await session.get(DeploymentTask, task_id)
    if task is None or task.job_id != job_id:
        raise not_found("deployment_task", task_id)
    return task


async def artifacts(session: Any, job: Deployment) -> list[dict[str, Any]]:
    """What the job deployed: each component version, by digest."""
    release = await session.get(Release, job.release_id)
    return [
        {
            "id": c["versionId"],
            "componentId": c["componentId"],
            "name": c["name"],
            "kind": c["kind"],
            "version": c["version"],
            "digest": c.get("digest"),
            "reference": c["reference"],
        }
        for c in (loads(release.components) if release is not None else [])
    ]


def routes(api: Api) -> Blueprint:
    """The deployment routes."""
    bp = blueprint("deployments")

    @bp.get("/deployment-jobs")
    @require(READ)
    @listed("The deployment jobs, newest first")
    async def list_jobs() -> Response:
        query = listing.parse(request.args, FIELDS, "-createdAt")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Deployment), query, Deployment.id)
        return ok([job_data(r) for r in rows], pagination=pages)

    @bp.get("/deployment-jobs/<job_id>")
    @require(READ)
    @answers(200, "The job and its tasks")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"))
    async def get_job_route(job_id: str) -> Response:
        async with api.session() as session:
            job = await get_job(session, job_id)
            tasks = (
                await session.exec(
                    select(DeploymentTask)
                    .where(DeploymentTask.job_id == job_id)
                    .order_by(DeploymentTask.target_name)
                )
            ).all()
        return ok({**job_data(job), "tasks": [task_data(t) for t in tasks]})

    @bp.get("/deployment-jobs/<job_id>/tasks")
    @require(READ)
    @listed("The job's tasks, one per target")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"))
    async def list_tasks(job_id: str) -> Response:
        query = listing.parse(request.args, TASK_FIELDS, "targetName")
        async with api.session() as session:
            await get_job(session, job_id)
            statement = select(DeploymentTask).where(DeploymentTask.job_id == job_id)
            rows, pages = await listing.page(session, statement, query, DeploymentTask.id)
        return ok([task_data(r) for r in rows], pagination=pages)

    @bp.get("/deployment-jobs/<job_id>/tasks/<task_id>")
    @require(READ)
    @answers(200, "The task")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"), (404, "DEPLOYMENT_TASK_NOT_FOUND"))
    async def get_task_route(job_id: str, task_id: str) -> Response:
        async with api.session() as session:
            await get_job(session, job_id)
            return ok(task_data(await get_task(session, job_id, task_id)))

    @bp.get("/deployment-jobs/<job_id>/tasks/<task_id>/logs")
    @require(READ)
    @answers(200, "The task's log")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"), (404, "DEPLOYMENT_TASK_NOT_FOUND"))
    async def task_logs(job_id: str, task_id: str) -> Response:
        async with api.session() as session:
            await get_job(session, job_id)
            task = await get_task(session, job_id, task_id)
        return ok({"taskId": task.id, "status": task.status, "logs": task.logs})

    @bp.get("/deployment-jobs/<job_id>/artifacts")
    @require(READ)
    @answers(200, "The component versions the job deployed")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"))
    async def list_artifacts(job_id: str) -> Response:
        async with api.session() as session:
            return ok(await artifacts(session, await get_job(session, job_id)))

    @bp.get("/deployment-jobs/<job_id>/artifacts/<artifact_id>")
    @require(READ)
    @answers(200, "One component version the job deployed")
    @errors((404, "DEPLOYMENT_JOB_NOT_FOUND"), (404, "ARTIFACT_NOT_FOUND"))
    async def get_artifact(job_id: str, artifact_id: str) -> Response:
        async with api.session() as session:
            found = await artifacts(session, await get_job(session, job_id))
        for artifact in found:
            if artifact["id"] == artifact_id:
                return ok(artifact)
        raise not_found("artifact", artifact_id)

    @bp.post("/rollbacks")
    @require(WRITE)
    @document_request(RollbackBody)
    @answers(201, "The rollback job, started")
    @errors((404, "ENVIRONMENT_NOT_FOUND"), (422, "NO_PREVIOUS_RELEASE"))
    async def rollback() -> Response:
        spec = await body(RollbackBody)
        who = caller()
        async with api.session() as session:
            await get_environment(session, spec.environment_id)
            done = (
                await session.exec(
                    select(Deployment)
                    .where(
                        Deployment.environment_id == spec.environment_id,
                        Deployment.status == "succeeded",
                    )
                    .order_by(Deployment.finished_at.desc(), Deployment.id)  # type: ignore[union-attr]
                )
            ).all()
            last = await _current(session, spec.environment_id)
        earlier = [j for j in done if last is None or j.release_id != last]
        if not earlier:
            raise ReleasesError(
                422, "NO_PREVIOUS_RELEASE", "no earlier release was deployed here successfully"
            )
        target = earlier[0]
        job = await create_job(
            api,
            who.tenant,
            target.release_id,
            spec.environment_id,
            target.promotion_id,
            who.subject,
            kind="rollback",
        )
        api.ctx.state[Runner].start(api, who.tenant, job.id)
        await api.audit("rollback.requested", job.id, reason=spec.reason[:200])
        return created(job_data(job))

    @bp.get("/rollbacks")
    @require(READ)
    @listed("The rollback jobs, newest first")
    async def list_rollbacks() -> Response:
        query = listing.parse(request.args, FIELDS, "-createdAt")
        async with api.session() as session:
            statement = select(Deployment).where(Deployment.kind == "rollback")
            rows, pages = await listing.page(session, statement, query, Deployment.id)
        return ok([job_data(r) for r in rows], pagination=pages)

    return bp


async def _current(session: Any, environment_id: str) -> str | None:
    """The release the environment's newest job (of any outcome) tried to deploy: a
    failed deployment is rolled back from too."""
    newest = (
        await session.exec(
            select(Deployment)
            .where(Deployment.environment_id == environment_id, Deployment.kind == "deploy")
            .order_by(Deployment.created_at.desc())
            .limit(1)
        )
    ).first()
    return None if newest is None else newest.release_id
