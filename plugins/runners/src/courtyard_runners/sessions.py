"""The agent protocol: an agent's token, heartbeats, the long poll that hands it jobs,
cancels, control and configuration, and the end of a job's run."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from . import bodies, errors
from .formats import dumps, loads
from .states import RETRYABLE, Claimed, hash_token
from .tables import JOBS, RUNNERS, SAMPLES


class AgentSessions:
    """Part of `Service` (service.py); its methods use the service's `db`, `options`,
    `log` and `notifier`."""

    # The agent protocol ------------------------------------------------------------------

    async def authenticate(self, runner_id: str, token: str | None) -> RowMapping:
        """The runner whose token this is. :raises RunnerError: 401 for a missing or
        wrong token (and for an unknown runner, so ids cannot be probed)."""
        if not token:
            raise errors.bad_token()
        async with self.db.engine.begin() as session:
            row = (
                (await session.execute(select(RUNNERS).where(RUNNERS.c.id == runner_id)))
                .mappings()
                .first()
            )
        if row is None or not hmac.compare_digest(row["token_hash"], hash_token(token)):
            raise errors.bad_token()
        return row

    async def heartbeat(self, row: RowMapping, body: bodies.Heartbeat) -> dict[str, Any]:
        """Record the agent's load and checks, as a metrics sample too."""
        now = time.time()
        runner_id = row["id"]
        load = body.load.model_dump()
        report = {
            "state": body.state,
            "session": body.session,
            "checks": body.checks,
            "capabilities_status": body.capabilities_status,
            "error": body.error,
            "received_at": now,
        }
        # The server's intent decides (the agent follows a start or stop a moment later).
        if body.error:
            status = "error"
        elif row["state"] == "stopped":
            status = "inactive"
        else:
            status = "active"
        async with self.db.engine.begin() as session:
            await session.execute(
                update(RUNNERS)
                .where(RUNNERS.c.id == runner_id)
                .values(
                    load=dumps(load),
                    report=dumps(report),
                    status=status,
                    last_heartbeat=now,
                    first_heartbeat=func.coalesce(RUNNERS.c.first_heartbeat, now),
                    updated_at=now,
                )
            )
            # A new session means the agent restarted: what the old one ran is lost.
            outcomes = await self._recover(
                session,
                and_(
                    JOBS.c.runner_id == runner_id,
                    or_(JOBS.c.session.is_(None), JOBS.c.session != body.session),
                ),
                now,
            )
            await session.execute(
                insert(SAMPLES).values(
                    runner_id=runner_id,
                    ts=now,
                    cpu=load["cpu_usage"],
                    memory=load["memory_usage"],
                    disk=load["disk_usage"],
                    active_jobs=load["active_jobs"],
                )
            )
        await self._announce_recovered(outcomes)
        await self.status_changed(runner_id, row["status"], status)
        return {"status": status, "heartbeat_seconds": self.options.heartbeat_seconds}

    async def poll(self, row: RowMapping, body: bodies.Poll, stop: asyncio.Event) -> Claimed:
        """Wait up to `body.wait` seconds for work, then hand over what there is: queued
        jobs up to `capacity` (claimed: `running`), cancels of its running jobs, control
        messages and the configuration."""
        runner_id = row["id"]
        deadline = time.monotonic() + body.wait
        with self.notifier.listen_work(runner_id) as event:
            while True:
                event.clear()
                claimed = await self._claim(runner_id, body)
                # A newer configuration answers too (changed here or on another instance).
                newer = claimed.config_version != body.config_version
                if claimed.jobs or claimed.cancel or claimed.control or newer:
                    return claimed
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set() or self.notifier.closed:
                    return claimed
                # Wake-ups come from here and (through the bus) from other instances; a
                # look every second covers a lost one.
                waiter = asyncio.ensure_future(event.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait(
                        {waiter, stopper},
                        timeout=min(left, 1.0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                    stopper.cancel()
                if event.is_set():
                    # Something changed (a job, a slot freed, the configuration): answer
                    # with what there is, so that the agent polls again up to date.
                    return await self._claim(runner_id, body)

    async def _claim(self, runner_id: str, body: bodies.Poll) -> Claimed:
        now = time.time()
        async with self.db.engine.begin() as session:
            row = (
                (await session.execute(select(RUNNERS).where(RUNNERS.c.id == runner_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise errors.bad_token()
            claimed = Claimed(
                config=loads(row["config"], {}),
                config_version=row["config_updated_at"],
                control=loads(row["control"], []),
                capabilities=loads(row["capabilities"], []),
            )
            if claimed.control:
                await session.execute(
                    update(RUNNERS).where(RUNNERS.c.id == runner_id).values(control="[]")
                )
            cancels = (
                await session.execute(
                    select(JOBS.c.id).where(
                        JOBS.c.runner_id == runner_id,
                        JOBS.c.status == "running",
                        JOBS.c.cancel_requested.is_(True),
                        JOBS.c.session == body.session,
                    )
                )
            ).all()
            claimed.cancel = [c[0] for c in cancels]
            # Jobs this session was given but no longer lists were lost on the way (an
            # answer that never arrived): retry or fail them rather than keep them running.
            lost = await self._recover(
                session,
                and_(
                    JOBS.c.runner_id == runner_id,
                    JOBS.c.session == body.session,
                    JOBS.c.id.not_in(body.running or [""]),
                ),
                now,
            )
            taking = row["state"] == "running" and row["status"] != "error"
            if taking and body.capacity > 0 and body.state == "running":
                candidates = (
                    (
                        await session.execute(
                            select(JOBS)
                            .where(JOBS.c.runner_id == runner_id, JOBS.c.status == "queued")
                            .order_by(JOBS.c.seq)
                            .limit(body.capacity)
                        )
                    )
                    .mappings()
                    .all()
                )
                for job in candidates:
                    # Conditional: of two polls (two instances), one moves the job.
                    moved = await session.execute(
                        update(JOBS)
                        .where(JOBS.c.id == job["id"], JOBS.c.status == "queued")
                        .values(
                            status="running",
                            session=body.session,
                            started_at=now,
                            attempt=job["attempt"] + 1,
                            updated_at=now,
                        )
                    )
                    if moved.rowcount:
                        claimed.jobs.append(self.handout(job, claimed.config, job["attempt"] + 1))
        await self._announce_recovered(lost)
        for job in claimed.jobs:
            await self.job_changed(runner_id, job["job_id"], "queued", "running")
        return claimed

    @staticmethod
    def handout(job: RowMapping, config: dict[str, Any], attempt: int) -> dict[str, Any]:
        """A job as the agent gets it: steps, environment, and its effective timeout
        (the job's, capped by the runner's `job_timeout`)."""
        limits = [t for t in (job["timeout"], config.get("job_timeout")) if t]
        return {
            "job_id": job["id"],
            "name": job["name"],
            "steps": loads(job["steps"], []),
            "environment": loads(job["environment"], {}),
            "timeout": min(limits) if limits else None,
            "attempt": attempt,
            "retry_count": job["retry_count"],
        }

    async def finish(self, row: RowMapping, job_id: str, body: bodies.Finish) -> str:
        """Record how a job's attempt ended: a failed or timed-out attempt with retries
        left goes back to `queued` (`retried` is answered). Returns the job's status.

        :raises RunnerError: 404 for another runner's job; 409 JOB_NOT_RUNNING when the
            job is no longer this session's (the sweeper retried it, or it was deleted).
        """
        runner_id = row["id"]
        now = time.time()
        async with self.db.engine.begin() as session:
            job = (
                (
                    await session.execute(
                        select(JOBS).where(JOBS.c.id == job_id, JOBS.c.runner_id == runner_id)
                    )
                )
                .mappings()
                .first()
            )
            if job is None:
                raise errors.job_not_found(runner_id, job_id)
            if job["status"] != "running" or job["session"] != body.session:
                raise errors.conflict(
                    "JOB_NOT_RUNNING",
                    f"Job '{job_id}' is not running on this agent (it is {job['status']})",
                    job_id=job_id,
                    status=job["status"],
                )
            status = body.status
            if job["cancel_requested"] and status != "completed":
                status = "cancelled"
            retry = status in RETRYABLE and job["attempt"] <= job["retry_count"]
            steps = [s.model_dump() for s in body.steps]
            values: dict[str, Any] = {
                "exit_code": body.exit_code,
                "error": body.error,
                "step_results": dumps(steps),
                "updated_at": now,
            }
            if retry:
                values.update(status="queued", session=None)
            else:
                values.update(status=status, completed_at=now)
            await session.execute(
                update(JOBS)
                .where(
                    JOBS.c.id == job_id, JOBS.c.status == "running", JOBS.c.session == body.session
                )
                .values(values)
            )
        if retry:
            await self.runner_event(
                runner_id,
                "warn",
                f"Job {job_id} attempt {job['attempt']} {status}; retrying "
                f"({job['attempt']} of {job['retry_count']} retries)",
                job_id,
            )
            await self.job_changed(runner_id, job_id, "running", "queued")
            await self.wake(runner_id)
            return "retried"
        await self.job_changed(runner_id, job_id, "running", status)
        await self.wake(runner_id)  # a slot is free: the agent's poll answers
        return status

    async def cancel_requested(self, runner_id: str, job_id: str) -> bool:
        """Whether the job was asked to stop (answered with each log batch)."""
        async with self.db.engine.begin() as session:
            value = (
                await session.execute(
                    select(JOBS.c.cancel_requested).where(
                        JOBS.c.id == job_id, JOBS.c.runner_id == runner_id
                    )
                )
            ).scalar()
        return bool(value)
