"""The sweeper: runners whose heartbeats stopped become `inactive`, and their running
jobs are retried or failed, so no job is left `running` by an agent that died."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.engine import RowMapping

from .states import KEEP_SAMPLES
from .tables import JOBS, LOGS, RUNNERS, SAMPLES


class Recovery:
    """Part of `Service` (service.py); its methods use the service's `db`, `options`,
    `log` and `notifier`."""

    # The sweeper ------------------------------------------------------------------------

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("runners sweep failed")
            await asyncio.sleep(self.options.sweep_seconds)

    async def sweep(self) -> None:
        """Runners whose heartbeats stopped become `inactive`; their running jobs go back
        to `queued` while retries remain, else fail. Old samples and log lines go."""
        now = time.time()
        cutoff = now - self.stale_after
        async with self.db.engine.begin() as session:
            lost = (
                (
                    await session.execute(
                        select(RUNNERS.c.id, RUNNERS.c.status).where(
                            RUNNERS.c.last_heartbeat < cutoff,
                            RUNNERS.c.status != "inactive",
                        )
                    )
                )
                .mappings()
                .all()
            )
            for runner in lost:
                await session.execute(
                    update(RUNNERS)
                    .where(RUNNERS.c.id == runner["id"], RUNNERS.c.last_heartbeat < cutoff)
                    .values(status="inactive", updated_at=now)
                )
            outcomes = await self._recover(
                session,
                or_(
                    RUNNERS.c.last_heartbeat < cutoff,
                    and_(RUNNERS.c.last_heartbeat.is_(None), JOBS.c.started_at < cutoff),
                ),
                now,
            )
            if now - self._last_prune > 60:
                self._last_prune = now
                await session.execute(delete(SAMPLES).where(SAMPLES.c.ts < now - KEEP_SAMPLES))
                if self.options.log_retention_seconds > 0:
                    await session.execute(
                        delete(LOGS).where(LOGS.c.ts < now - self.options.log_retention_seconds)
                    )
        for runner in lost:
            self.log.warning("runner %s missed its heartbeats: inactive", runner["id"])
            await self.status_changed(runner["id"], runner["status"], "inactive")
        await self._announce_recovered(outcomes)

    async def _recover(self, session: Any, lost: Any, now: float) -> list[tuple[RowMapping, str]]:
        """Running jobs matching `lost` (a condition on the job and its runner) go back to
        `queued` while retries remain, else end `failed` (or `cancelled` when that was
        asked). Returns each job with its new status; the caller commits."""
        orphans = (
            (
                await session.execute(
                    select(
                        JOBS.c.id,
                        JOBS.c.runner_id,
                        JOBS.c.attempt,
                        JOBS.c.retry_count,
                        JOBS.c.cancel_requested,
                    )
                    .join(RUNNERS, RUNNERS.c.id == JOBS.c.runner_id)
                    .where(JOBS.c.status == "running", lost)
                )
            )
            .mappings()
            .all()
        )
        outcomes = []
        for job in orphans:
            retry = not job["cancel_requested"] and job["attempt"] <= job["retry_count"]
            values: dict[str, Any] = {"updated_at": now, "session": None}
            if retry:
                values["status"] = "queued"
            elif job["cancel_requested"]:
                values.update(
                    status="cancelled",
                    completed_at=now,
                    error="cancelled: the runner's agent went away",
                )
            else:
                values.update(
                    status="failed",
                    completed_at=now,
                    error="the runner's agent went away while the job ran",
                )
            moved = await session.execute(
                update(JOBS)
                .where(JOBS.c.id == job["id"], JOBS.c.status == "running")
                .values(values)
            )
            if moved.rowcount:
                outcomes.append((job, values["status"]))
        return outcomes

    async def _announce_recovered(self, outcomes: list[tuple[RowMapping, str]]) -> None:
        for job, status in outcomes:
            verb = "requeued for another attempt" if status == "queued" else status
            await self.runner_event(
                job["runner_id"],
                "error",
                f"Job {job['id']} lost with its runner's agent: {verb}",
                job["id"],
            )
            await self.job_changed(job["runner_id"], job["id"], "running", status)
            if status == "queued":
                await self.wake(job["runner_id"])
