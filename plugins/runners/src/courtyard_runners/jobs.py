"""Jobs and their logs: submission, the queue's start estimate, lookups, cancels, and
the log lines agents send and clients read."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import RowMapping

from . import bodies, errors
from .formats import dumps, loads
from .states import ACTIVE, FINISHED
from .tables import JOBS, LOGS


class JobRecords:
    """Part of `Service` (service.py); its methods use the service's `db`, `options`,
    `log` and `notifier`."""

    # Jobs --------------------------------------------------------------------------------

    def accepts_jobs(self, row: RowMapping) -> str | None:
        """Why the runner takes no job now, or None. A runner whose agent never connected
        yet takes jobs into its queue: they start when the agent connects."""
        if row["state"] == "stopped":
            return "it is stopped (POST .../start to start it)"
        if row["status"] == "error":
            return "it reports an error"
        if row["last_heartbeat"] is not None and not self.connected(row):
            return "its agent stopped sending heartbeats"
        return None

    async def submit(self, runner_id: str, body: bodies.Job) -> tuple[str, float]:
        """Queue a job; returns its id and an estimated start time."""
        row = await self.runner(runner_id)
        why = self.accepts_jobs(row)
        if why is not None:
            raise errors.unavailable(runner_id, why)
        job_id = f"job_{uuid.uuid4()}"
        now = time.time()
        async with self.db.engine.begin() as session:
            await session.execute(
                insert(JOBS).values(
                    id=job_id,
                    runner_id=runner_id,
                    name=body.name,
                    steps=dumps([s.model_dump() for s in body.steps]),
                    environment=dumps(body.environment),
                    timeout=body.timeout,
                    retry_count=body.retry_count,
                    attempt=0,
                    status="queued",
                    cancel_requested=False,
                    step_results="[]",
                    created_at=now,
                    updated_at=now,
                )
            )
        await self.wake(runner_id)
        await self.job_changed(runner_id, job_id, "new", "queued")
        return job_id, await self.estimate_start(row, job_id, now)

    async def estimate_start(self, row: RowMapping, job_id: str, now: float) -> float:
        """When the job should start: now if a slot is free, else after the jobs ahead
        of it, at the runner's average run time, spread over its slots."""
        config = loads(row["config"], {})
        slots = max(1, int(config.get("max_concurrent_jobs", 1)))
        async with self.db.engine.begin() as session:
            seq = (
                await session.execute(select(JOBS.c.seq).where(JOBS.c.id == job_id))
            ).scalar_one()
            running = (
                await session.execute(
                    select(func.count()).where(
                        JOBS.c.runner_id == row["id"], JOBS.c.status == "running"
                    )
                )
            ).scalar_one()
            ahead = (
                await session.execute(
                    select(func.count()).where(
                        JOBS.c.runner_id == row["id"],
                        JOBS.c.status == "queued",
                        JOBS.c.seq < seq,
                    )
                )
            ).scalar_one()
            average = (
                await session.execute(
                    select(func.avg(JOBS.c.completed_at - JOBS.c.started_at)).where(
                        JOBS.c.runner_id == row["id"],
                        JOBS.c.status.in_(FINISHED),
                        JOBS.c.started_at.is_not(None),
                    )
                )
            ).scalar()
        waiting = running + ahead - slots + 1
        if waiting <= 0:
            return now
        return now + (waiting / slots) * float(average or 60.0)

    async def jobs(
        self, runner_id: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[RowMapping], int]:
        """The runner's jobs, newest first."""
        await self.runner(runner_id)
        where = [JOBS.c.runner_id == runner_id]
        if status:
            where.append(JOBS.c.status == status)
        async with self.db.engine.begin() as session:
            total = (await session.execute(select(func.count()).where(*where))).scalar_one()
            rows = (
                (
                    await session.execute(
                        select(JOBS)
                        .where(*where)
                        .order_by(JOBS.c.seq.desc())
                        .limit(limit)
                        .offset(offset)
                    )
                )
                .mappings()
                .all()
            )
        return list(rows), total

    async def job(self, runner_id: str, job_id: str) -> RowMapping:
        """One job of the runner. :raises RunnerError: 404."""
        await self.runner(runner_id)
        async with self.db.engine.begin() as session:
            row = (
                (
                    await session.execute(
                        select(JOBS).where(JOBS.c.id == job_id, JOBS.c.runner_id == runner_id)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise errors.job_not_found(runner_id, job_id)
        return row

    async def cancel(self, runner_id: str, job_id: str) -> str:
        """Cancel a job: a queued one at once, a running one by its agent (which stops
        its process group and reports `cancelled`). Returns the job's status after.

        :raises RunnerError: 409 JOB_FINISHED for a job that already ended.
        """
        row = await self.job(runner_id, job_id)
        if row["status"] in FINISHED:
            raise errors.conflict(
                "JOB_FINISHED",
                f"Job '{job_id}' already ended ({row['status']})",
                job_id=job_id,
                status=row["status"],
            )
        now = time.time()
        async with self.db.engine.begin() as session:
            queued = await session.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status == "queued")
                .values(
                    status="cancelled",
                    completed_at=now,
                    updated_at=now,
                    error="cancelled before it started",
                    cancel_requested=True,
                )
            )
            if queued.rowcount:
                await self.job_changed(runner_id, job_id, "queued", "cancelled")
                return "cancelled"
            await session.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status == "running")
                .values(cancel_requested=True, updated_at=now)
            )
        await self.wake(runner_id)
        return "cancelling"

    async def cancel_active(self, runner_id: str, reason: str) -> list[str]:
        """Cancel every queued job of the runner and ask its agent to cancel the running
        ones; returns the ids."""
        async with self.db.engine.begin() as session:
            rows = (
                await session.execute(
                    select(JOBS.c.id).where(
                        JOBS.c.runner_id == runner_id, JOBS.c.status.in_(ACTIVE)
                    )
                )
            ).all()
        ids = [r[0] for r in rows]
        for job_id in ids:
            with contextlib.suppress(errors.RunnerError):
                await self.cancel(runner_id, job_id)
        if ids:
            self.log.info("runner %s: cancelled %d job(s): %s", runner_id, len(ids), reason)
        return ids

    # Logs --------------------------------------------------------------------------------

    def _log_filters(
        self,
        runner_id: str,
        since: float | None,
        until: float | None,
        levels: Sequence[str] | None,
        job_id: str | None,
    ) -> list[Any]:
        where: list[Any] = [LOGS.c.runner_id == runner_id]
        if since is not None:
            where.append(LOGS.c.ts >= since)
        if until is not None:
            where.append(LOGS.c.ts <= until)
        if levels:
            where.append(LOGS.c.level.in_(list(levels)))
        if job_id:
            where.append(LOGS.c.job_id == job_id)
        return where

    async def logs(
        self,
        runner_id: str,
        since: float | None = None,
        until: float | None = None,
        levels: Sequence[str] | None = None,
        job_id: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> tuple[list[RowMapping], int]:
        """Log lines in order: the newest `limit` of the range and how many it holds; or,
        with `after` (a stream going on), the first `limit` after that seq (count -1)."""
        where = self._log_filters(runner_id, since, until, levels, job_id)
        query = select(LOGS).where(*where)
        async with self.db.engine.begin() as session:
            if after is not None:
                query = query.where(LOGS.c.seq > after).order_by(LOGS.c.seq).limit(limit)
                return list((await session.execute(query)).mappings().all()), -1
            total = (await session.execute(select(func.count()).where(*where))).scalar_one()
            query = query.order_by(LOGS.c.seq.desc()).limit(limit)
            rows = list(reversed((await session.execute(query)).mappings().all()))
        return rows, total

    async def last_log_seq(self, runner_id: str) -> int:
        """The seq of the runner's latest log line (0 without one)."""
        async with self.db.engine.begin() as session:
            value = (
                await session.execute(
                    select(func.max(LOGS.c.seq)).where(LOGS.c.runner_id == runner_id)
                )
            ).scalar()
        return int(value or 0)

    async def append_logs(
        self, runner_id: str, job_id: str | None, lines: Sequence[bodies.Line]
    ) -> None:
        """Store an agent's lines, in the order sent, and wake the followers."""
        if not lines:
            return
        rows = [
            {
                "runner_id": runner_id,
                "job_id": job_id,
                "step": line.step,
                "level": line.level,
                # PostgreSQL text cannot hold NUL; a job's output may.
                "message": line.message.replace("\x00", "\ufffd"),
                "ts": line.ts,
            }
            for line in lines
        ]
        async with self.db.engine.begin() as session:
            await session.execute(insert(LOGS), rows)
        self.notifier.logs(runner_id)
        await self.publish("runners.logs", {"runner_id": runner_id, "count": len(rows)})

    async def runner_event(
        self, runner_id: str, level: str, message: str, job_id: str | None = None
    ) -> None:
        """A line of the server's own in the runner's log (a job retried, a runner lost)."""
        line = bodies.Line(ts=time.time(), level=level, message=message)  # type: ignore[arg-type]
        await self.append_logs(runner_id, job_id, [line])
