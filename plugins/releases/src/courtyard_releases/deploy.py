"""Deployment jobs: an approved promotion (or a rollback) becomes a job with one task per
target of its environment, run all at once in the background.

A task that succeeds writes its target's sticker; one that fails leaves the previous
sticker. The job succeeds when every task does (a job with no target fails), then moves
the promotion from `approved` to `deployed`; either way it gets a signed evidence packet.
Jobs run in this server's process (the generation's `Runner`), and are awaited at
shutdown; a job whose process died (on this host) is marked failed at the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlmodel import select

from . import crypto, installers
from .blobs import BlobStore
from .common import Api, dumps, loads
from .connection import opened
from .envelope import now_text
from .evidence import private_key, signing_key
from .tables import Deployment, DeploymentTask, EvidencePacket, Promotion, Release, Sticker, Target


def owner() -> str:
    """This process, as recorded on the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


UNFINISHED = ("pending", "running")


@dataclass(eq=False)
class Runner:
    """The generation's running jobs."""

    blobs: BlobStore
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, api: Api, tenant: str, job_id: str) -> None:
        """Run a job in the background."""
        task = asyncio.get_running_loop().create_task(execute(api, self, tenant, job_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Let the running jobs finish (they are short: one upload or script per target)."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def create_job(
    api: Api,
    tenant: str,
    release_id: str,
    environment_id: str,
    promotion_id: str,
    requested_by: str,
    kind: str = "deploy",
) -> Deployment:
    """A pending job with a task per target of the environment."""
    async with api.session_for(tenant) as session:
        targets = (
            await session.exec(
                select(Target).where(Target.environment_id == environment_id).order_by(Target.name)
            )
        ).all()
        job = Deployment(
            tenant_id=tenant,
            kind=kind,
            promotion_id=promotion_id,
            release_id=release_id,
            environment_id=environment_id,
            status="pending",
            requested_by=requested_by,
            owner=owner(),
            created_at=now_text(),
        )
        session.add(job)
        for target in targets:
            session.add(
                DeploymentTask(
                    tenant_id=tenant, job_id=job.id, target_id=target.id, target_name=target.name
                )
            )
        await session.commit()
    await api.audit(f"deployment.{kind}_created", job.id, releaseId=release_id)
    return job


async def execute(api: Api, runner: Runner, tenant: str, job_id: str) -> None:
    """Run the job's tasks that this server runs, all at once; an agent's tasks wait for
    the agent, and the job finishes with its last task."""
    try:
        await _execute(api, runner, tenant, job_id)
    except Exception as exc:  # a bug or the database gone: the job must not stay running
        api.ctx.logger.exception("deployment %s failed", job_id)
        async with api.session_for(tenant) as session:
            await session.exec(
                update(Deployment)  # type: ignore[call-overload]
                .where(Deployment.id == job_id, Deployment.status.in_(UNFINISHED))
                .values(
                    status="failed",
                    error=f"internal error: {type(exc).__name__}",
                    finished_at=now_text(),
                )
            )
            await session.commit()


async def _execute(api: Api, runner: Runner, tenant: str, job_id: str) -> None:
    async with api.session_for(tenant) as session:
        job = await session.get(Deployment, job_id)
        release = await session.get(Release, job.release_id)
        tasks = (
            await session.exec(select(DeploymentTask).where(DeploymentTask.job_id == job_id))
        ).all()
        targets = {t.id: t for t in (await session.exec(select(Target))).all()}
        previous = {t.id: await _sticker(session, t.target_id) for t in tasks}
        job.status, job.started_at, job.owner = "running", now_text(), owner()
        session.add(job)
        await session.commit()
    ours = [t for t in tasks if not getattr(targets.get(t.target_id), "agent_id", None)]
    await asyncio.gather(
        *(
            _run_task(
                api,
                runner,
                tenant,
                task,
                targets.get(task.target_id),
                release,
                previous[task.id],
                job.kind,
            )
            for task in ours
        )
    )
    await finish_if_done(api, tenant, job_id)


async def _sticker(session: Any, target_id: str) -> Sticker | None:
    statement = select(Sticker).where(Sticker.target_id == target_id)
    return (await session.exec(statement.order_by(Sticker.deployed_at.desc()).limit(1))).first()


def replaced_versions(kind: str, previous: Sticker | None) -> dict[str, str]:
    """On a rollback, the app versions the restored ones replace (app -> version)."""
    if kind != "rollback" or previous is None:
        return {}
    return {c["app"]: c["appVersion"] for c in loads(previous.components) if c.get("app")}


async def _run_task(
    api: Api,
    runner: Runner,
    tenant: str,
    task: DeploymentTask,
    target: Target | None,
    release: Release,
    previous: Sticker | None,
    kind: str,
) -> None:
    log = installers.Log()
    started = now_text()
    installed: list[dict[str, Any]] = []
    error = ""
    components = loads(release.components)
    try:
        if target is None:
            raise installers.InstallError("the target was deleted")
        connection = opened(target.connection, api.sealer)
        if target.type == "courtyard":
            installed = await installers.courtyard(
                connection,
                components,
                installers.from_store(runner.blobs),
                log,
                replaced_versions(kind, previous),
            )
        else:
            about = {"id": release.id, "name": release.name}
            installed = await installers.script(connection, components, about, log)
    except (installers.InstallError, ValueError, OSError) as exc:
        error = str(exc)[:2000]
        log.write(f"failed: {error}")
    await record_task(api, tenant, task.id, started, error, log.text(), installed)


async def record_task(
    api: Api,
    tenant: str,
    task_id: str,
    started: str | None,
    error: str,
    logs: str,
    installed: list[dict[str, Any]],
) -> None:
    """A task's outcome; a success writes its target's sticker."""
    async with api.session_for(tenant) as session:
        row = await session.get(DeploymentTask, task_id)
        job = await session.get(Deployment, row.job_id)
        release = await session.get(Release, job.release_id)
        target = await session.get(Target, row.target_id)
        row.status = "failed" if error else "succeeded"
        row.error, row.logs = error, logs[: installers.MAX_LOG]
        row.started_at, row.finished_at = row.started_at or started, now_text()
        session.add(row)
        if not error and target is not None:
            session.add(
                Sticker(
                    tenant_id=tenant,
                    target_id=target.id,
                    environment_id=target.environment_id,
                    release_id=release.id,
                    release_name=release.name,
                    deployment_id=job.id,
                    components=dumps(installed),
                    deployed_by=job.requested_by,
                    deployed_at=row.finished_at,
                )
            )
        await session.commit()


async def finish_if_done(api: Api, tenant: str, job_id: str) -> None:
    """Once no task of the job is left, record its outcome (exactly once, however many
    tasks finish together), move the promotion to `deployed`, sign the evidence."""
    async with api.session_for(tenant) as session:
        tasks = (
            await session.exec(select(DeploymentTask).where(DeploymentTask.job_id == job_id))
        ).all()
        if any(t.status in UNFINISHED for t in tasks):
            return
        succeeded = bool(tasks) and all(t.status == "succeeded" for t in tasks)
        now = now_text()
        error = (
            ""
            if succeeded
            else ("a target failed; see the tasks" if tasks else "the environment has no target")
        )
        changed = await session.exec(
            update(Deployment)  # type: ignore[call-overload]
            .where(Deployment.id == job_id, Deployment.status.in_(UNFINISHED))
            .values(status="succeeded" if succeeded else "failed", error=error, finished_at=now)
        )
        if changed.rowcount != 1:
            return  # another finisher recorded it
        job = await session.get(Deployment, job_id)
        await session.refresh(job)
        if succeeded and job.kind == "deploy":
            await session.exec(
                update(Promotion)  # type: ignore[call-overload]
                .where(Promotion.id == job.promotion_id, Promotion.status == "approved")
                .values(status="deployed", updated_at=now)
            )
        await session.commit()
    await _evidence(api, tenant, job_id)
    await api.audit(f"deployment.{job.status}", job_id, releaseId=job.release_id)
    await api.publish(
        f"deployment.{job.status}",
        tenant,
        jobId=job_id,
        kind=job.kind,
        releaseId=job.release_id,
        environmentId=job.environment_id,
    )


async def _evidence(api: Api, tenant: str, job_id: str) -> None:
    """The signed record of a finished job: release, digests, each target's result."""
    key = await signing_key(api, tenant)
    async with api.session_for(tenant) as session:
        job = await session.get(Deployment, job_id)
        release = await session.get(Release, job.release_id)
        tasks = (
            await session.exec(
                select(DeploymentTask)
                .where(DeploymentTask.job_id == job_id)
                .order_by(DeploymentTask.target_name)
            )
        ).all()
        content = {
            "schema": "courtyard.releases/evidence@1",
            "kind": f"deployment.{job.kind}",
            "tenant": tenant,
            "deployment": {
                "id": job.id,
                "status": job.status,
                "strategy": job.strategy,
                "promotionId": job.promotion_id,
                "requestedBy": job.requested_by,
                "startedAt": job.started_at,
                "finishedAt": job.finished_at,
                "error": job.error,
            },
            "release": {
                "id": release.id,
                "name": release.name,
                "components": loads(release.components),
            },
            "environmentId": job.environment_id,
            "targets": [
                {
                    "targetId": t.target_id,
                    "name": t.target_name,
                    "status": t.status,
                    "error": t.error,
                    "finishedAt": t.finished_at,
                }
                for t in tasks
            ],
        }
        raw = crypto.canonical(content)
        session.add(
            EvidencePacket(
                tenant_id=tenant,
                kind=f"deployment.{job.kind}",
                promotion_id=job.promotion_id,
                release_id=job.release_id,
                environment_id=job.environment_id,
                content=raw.decode(),
                sha256=hashlib.sha256(raw).hexdigest(),
                signature=crypto.sign(private_key(api, key), raw),
                key_id=key.id,
                created_at=now_text(),
            )
        )
        await session.commit()


async def fail_unfinished(api: Api) -> int:
    """Mark failed the jobs that a process of this host left unfinished when it died (a
    job of a live process, such as the previous generation of this one, runs on)."""
    host = socket.gethostname()
    async with api.unscoped() as session:
        unfinished = (
            await session.exec(
                select(Deployment).where(
                    Deployment.status.in_(UNFINISHED)  # type: ignore[attr-defined]
                )
            )
        ).all()
        dead = []
        for job in unfinished:
            name, _, pid = job.owner.rpartition(":")
            if name == host and pid.isdigit() and not _alive(int(pid)):
                dead.append(job.id)
        if dead:
            await session.exec(
                update(Deployment)  # type: ignore[call-overload]
                .where(Deployment.id.in_(dead), Deployment.status.in_(UNFINISHED))  # type: ignore[attr-defined]
                .values(
                    status="failed",
                    error="the server stopped during the deployment",
                    finished_at=now_text(),
                )
            )
            await session.commit()
    return len(dead)
