"""Runners and their jobs on the runtime's database: what every route does.

One `Service` per generation. Every change goes through the database, so several
instances sharing it (PostgreSQL) serve the same runners: a job is claimed by a
conditional UPDATE (only one agent poll can move it from `queued` to `running`), and
wake-ups for other instances travel on the event bus. The sweeper (`sweep`) turns runners
whose heartbeats stopped `inactive` and retries or fails their running jobs, so no job is
ever left `running` by an agent that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from . import bodies, errors
from .formats import dumps, iso, loads
from .notify import Notifier
from .tables import JOBS, LOGS, RUNNERS, SAMPLES

FINISHED = ("completed", "failed", "cancelled", "timed_out")
ACTIVE = ("queued", "running")
METRIC_PERIODS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
RESOLUTIONS = {"1m": 60, "5m": 300, "1h": 3600}
DEFAULT_RESOLUTION = {"1h": "1m", "24h": "5m", "7d": "1h", "30d": "1h"}
KEEP_SAMPLES = max(METRIC_PERIODS.values())
RETRYABLE = ("failed", "timed_out")

Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]


def hash_token(token: str) -> str:
    """The stored form of a registration token: its SHA-256 (the token is 256 random
    bits, so a fast hash is as safe as a slow one, and costs every agent request nothing)."""
    return hashlib.sha256(token.encode()).hexdigest()


def default_config(kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A new runner's configuration; `max_concurrent_jobs` from its metadata if given."""
    wanted = metadata.get("max_concurrent_jobs")
    concurrent = wanted if isinstance(wanted, int) and 1 <= wanted <= 1000 else 1
    return {
        "max_concurrent_jobs": concurrent,
        "job_timeout": 3600,
        "cleanup_policy": "always",
        "resource_limits": {"cpu_limit": None, "memory_limit": None, "disk_limit": None},
        "executor": "docker" if kind == "docker" else "native",
        "docker_config": {"privileged": False, "network_mode": "bridge", "volumes": []},
        "isolation_config": {"network": False},
    }


# What needs the agent to restart: the executor (the agent builds it when it starts).
RESTART_KEYS = ("executor",)


@dataclass
class Options:
    """The plugin's settings the service uses."""

    heartbeat_seconds: float = 10.0
    missed_heartbeats: int = 3
    sweep_seconds: float = 1.0
    log_retention_seconds: float = 30 * 86400


@dataclass
class Claimed:
    """What a poll hands an agent."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_version: float = 0.0
    capabilities: list[str] = field(default_factory=list)


class Service:
    """Everything RustCI's runner API and the agent protocol do, on `db`."""

    def __init__(
        self,
        db: Any,
        options: Options,
        logger: logging.Logger,
        publish: Publisher | None = None,
    ) -> None:
        self.db = db
        self.options = options
        self.log = logger
        self.notifier = Notifier()
        self._publish = publish
        self._tasks: list[asyncio.Task[None]] = []
        self._last_prune = 0.0

    # Lifecycle ---------------------------------------------------------------------------

    def start(self, listen: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start the sweeper (and the listener of other instances' changes)."""
        self._tasks.append(asyncio.create_task(self._sweeper(), name="runners-sweeper"))
        if listen is not None:
            self._tasks.append(asyncio.create_task(listen(), name="runners-listener"))

    async def close(self) -> None:
        """Wake every waiter, stop the background tasks."""
        self.notifier.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish on the event bus; a failure is logged, never raised (the change is in
        the database already)."""
        if self._publish is None:
            return
        try:
            await self._publish(topic, data)
        except Exception as exc:
            self.log.warning("could not publish %s: %s", topic, exc)

    async def wake(self, runner_id: str) -> None:
        """Tell the runner's agent (here, or polling another instance) to look again."""
        self.notifier.work(runner_id)
        await self.publish("runners.wake", {"runner_id": runner_id})

    async def status_changed(self, runner_id: str, old: str, new: str) -> None:
        """Announce a status change (RustCI's `runner_status_change` frame)."""
        if old == new:
            return
        await self.publish(
            "runners.status",
            {
                "type": "runner_status_change",
                "runner_id": runner_id,
                "old_status": old,
                "new_status": new,
                "timestamp": iso(time.time()),
            },
        )

    async def job_changed(self, runner_id: str, job_id: str, old: str, new: str) -> None:
        """Announce a job's state change (`job_status_change`)."""
        await self.publish(
            "runners.job",
            {
                "type": "job_status_change",
                "runner_id": runner_id,
                "job_id": job_id,
                "old_status": old,
                "new_status": new,
                "timestamp": iso(time.time()),
            },
        )

    # Runners -----------------------------------------------------------------------------

    async def register(self, body: bodies.Register) -> tuple[str, str]:
        """A new runner; returns its id and its registration token (shown once)."""
        ident = uuid.uuid4()
        runner_id = f"runner_{ident}"
        # The token names its runner, so an agent needs nothing but it (and the URL).
        token = f"crt_{ident}_{secrets.token_urlsafe(32)}"
        now = time.time()
        metadata = dict(body.metadata)
        async with self.db.engine.begin() as session:
            await session.execute(
                insert(RUNNERS).values(
                    id=runner_id,
                    name=body.name,
                    type=body.type,
                    host=body.host,
                    port=body.port,
                    capabilities=dumps(list(dict.fromkeys(body.capabilities))),
                    metadata=dumps(metadata),
                    tags=dumps(list(dict.fromkeys(body.tags))),
                    resources=dumps(body.resources.model_dump(exclude_none=True)),
                    token_hash=hash_token(token),
                    status="inactive",
                    state="running",
                    config=dumps(default_config(body.type, metadata)),
                    config_updated_at=now,
                    restart_required=False,
                    control="[]",
                    load="{}",
                    report="{}",
                    registered_at=now,
                    updated_at=now,
                )
            )
        return runner_id, token

    async def runner(self, runner_id: str) -> RowMapping:
        """The runner's row. :raises RunnerError: 404 RUNNER_NOT_FOUND."""
        async with self.db.engine.begin() as session:
            row = (
                (await session.execute(select(RUNNERS).where(RUNNERS.c.id == runner_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise errors.not_found(runner_id)
        return row

    @staticmethod
    def _filters(
        status: str | None, kind: str | None, tags: Sequence[str] | None
    ) -> tuple[list[Any], list[str]]:
        where: list[Any] = []
        if status:
            where.append(RUNNERS.c.status == status)
        if kind:
            where.append(RUNNERS.c.type == kind)
        return where, [t for t in (tags or []) if t]

    async def runners(
        self,
        status: str | None = None,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[RowMapping], int]:
        """Runners matching the filters (every tag given), oldest first, and how many
        match in all."""
        where, wanted = self._filters(status, kind, tags)
        query = select(RUNNERS).where(*where).order_by(RUNNERS.c.registered_at, RUNNERS.c.id)
        async with self.db.engine.begin() as session:
            if not wanted:
                counting = select(func.count()).select_from(RUNNERS).where(*where)
                total = (await session.execute(counting)).scalar_one()
                if limit is not None:
                    query = query.limit(limit)
                query = query.offset(offset)
                return list((await session.execute(query)).mappings().all()), total
            # Tags are a JSON list per runner: matched here, after the other filters.
            rows = list((await session.execute(query)).mappings().all())
        rows = [r for r in rows if set(wanted) <= set(loads(r["tags"], []))]
        end = None if limit is None else offset + limit
        return rows[offset:end], len(rows)

    async def update(self, runner_id: str, body: bodies.Update) -> None:
        """Change what the runner declared; `metadata` keys are merged (null deletes)."""
        row = await self.runner(runner_id)
        values: dict[str, Any] = {"updated_at": time.time()}
        given = body.model_fields_set
        for key in ("name", "host", "port"):
            if key in given:
                if key == "name" and body.name is None:
                    raise errors.invalid("name: must not be null")
                values[key] = getattr(body, key)
        if "capabilities" in given:
            values["capabilities"] = dumps(list(dict.fromkeys(body.capabilities or [])))
        if "tags" in given:
            values["tags"] = dumps(list(dict.fromkeys(body.tags or [])))
        if "resources" in given:
            resources = body.resources.model_dump(exclude_none=True) if body.resources else {}
            values["resources"] = dumps(resources)
        if "metadata" in given and body.metadata is not None:
            merged = loads(row["metadata"], {})
            for key, value in body.metadata.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            if len(dumps(merged)) > bodies.MAX_JSON_TEXT:
                raise errors.invalid(f"metadata: must be at most {bodies.MAX_JSON_TEXT} bytes")
            values["metadata"] = dumps(merged)
        async with self.db.engine.begin() as session:
            await session.execute(update(RUNNERS).where(RUNNERS.c.id == runner_id).values(values))

    async def delete(self, runner_id: str, force: bool) -> int:
        """Unregister the runner with its jobs, logs and samples; returns how many active
        jobs were cancelled. :raises RunnerError: 409 RUNNER_BUSY with active jobs unless
        `force`."""
        row = await self.runner(runner_id)
        async with self.db.engine.begin() as session:
            active = (
                await session.execute(
                    select(JOBS.c.id, JOBS.c.status).where(
                        JOBS.c.runner_id == runner_id, JOBS.c.status.in_(ACTIVE)
                    )
                )
            ).all()
            if active and not force:
                raise errors.conflict(
                    "RUNNER_BUSY",
                    f"Runner '{runner_id}' has {len(active)} active job(s); "
                    "cancel them first or delete with ?force=true",
                    runner_id=runner_id,
                    active_jobs=len(active),
                )
            for table in (JOBS, LOGS, SAMPLES):
                await session.execute(delete(table).where(table.c.runner_id == runner_id))
            await session.execute(delete(RUNNERS).where(RUNNERS.c.id == runner_id))
        # The agent's next request fails with 401: it stops, cancelling what it runs.
        await self.wake(runner_id)
        for job_id, status in active:
            await self.job_changed(runner_id, job_id, status, "cancelled")
        await self.status_changed(runner_id, row["status"], "deleted")
        return len(active)

    async def statistics(self, row: RowMapping) -> dict[str, Any]:
        """Totals of the jobs really run, and uptime from the heartbeat samples."""
        runner_id = row["id"]
        async with self.db.engine.begin() as session:
            counts = dict(
                (
                    await session.execute(
                        select(JOBS.c.status, func.count())
                        .where(JOBS.c.runner_id == runner_id, JOBS.c.started_at.is_not(None))
                        .group_by(JOBS.c.status)
                    )
                ).all()
            )
            average = (
                await session.execute(
                    select(func.avg(JOBS.c.completed_at - JOBS.c.started_at)).where(
                        JOBS.c.runner_id == runner_id,
                        JOBS.c.status.in_(FINISHED),
                        JOBS.c.started_at.is_not(None),
                        JOBS.c.completed_at.is_not(None),
                    )
                )
            ).scalar()
        executed = sum(counts.get(s, 0) for s in FINISHED)
        return {
            "total_jobs_executed": executed,
            "successful_jobs": counts.get("completed", 0),
            "failed_jobs": counts.get("failed", 0) + counts.get("timed_out", 0),
            "cancelled_jobs": counts.get("cancelled", 0),
            "average_execution_time": round(float(average or 0.0), 3),
            "uptime_percentage": await self.uptime(row),
        }

    async def uptime(self, row: RowMapping, period: float = KEEP_SAMPLES) -> float:
        """The share of time, since the agent first connected (within `period`), covered
        by heartbeats: samples received over samples expected."""
        first = row["first_heartbeat"]
        if first is None:
            return 0.0
        now = time.time()
        start = max(first, now - period)
        async with self.db.engine.begin() as session:
            count = (
                await session.execute(
                    select(func.count()).where(
                        SAMPLES.c.runner_id == row["id"], SAMPLES.c.ts >= start
                    )
                )
            ).scalar_one()
        expected = max(1.0, (now - start) / self.options.heartbeat_seconds)
        return round(min(100.0, 100.0 * count / expected), 1)

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

    # Metrics -----------------------------------------------------------------------------

    async def metrics(self, runner_id: str, period: str, resolution: str) -> dict[str, Any]:
        """Heartbeat samples of `period`, averaged per `resolution` bucket."""
        await self.runner(runner_id)
        now = time.time()
        start = now - METRIC_PERIODS[period]
        step = RESOLUTIONS[resolution]
        bucket = func.floor(SAMPLES.c.ts / step).label("bucket")
        where = [SAMPLES.c.runner_id == runner_id, SAMPLES.c.ts >= start]
        async with self.db.engine.begin() as session:
            series = (
                await session.execute(
                    select(
                        bucket,
                        func.avg(SAMPLES.c.cpu),
                        func.avg(SAMPLES.c.memory),
                        func.avg(SAMPLES.c.active_jobs),
                        func.avg(SAMPLES.c.disk),
                    )
                    .where(*where)
                    .group_by(bucket)
                    .order_by(bucket)
                )
            ).all()
            summary = (
                await session.execute(
                    select(
                        func.avg(SAMPLES.c.cpu),
                        func.max(SAMPLES.c.cpu),
                        func.avg(SAMPLES.c.memory),
                        func.max(SAMPLES.c.memory),
                    ).where(*where)
                )
            ).one()
            executed = (
                await session.execute(
                    select(func.count()).where(
                        JOBS.c.runner_id == runner_id,
                        JOBS.c.status.in_(FINISHED),
                        JOBS.c.started_at.is_not(None),
                        JOBS.c.completed_at >= start,
                    )
                )
            ).scalar_one()

        def points(index: int, digits: int = 1) -> list[dict[str, Any]]:
            return [
                {"timestamp": iso(float(row[0]) * step), "value": round(float(row[index]), digits)}
                for row in series
            ]

        return {
            "runner_id": runner_id,
            "period": period,
            "resolution": resolution,
            "metrics": {
                "cpu_usage": points(1),
                "memory_usage": points(2),
                "active_jobs": points(3, 2),
                "disk_usage": points(4),
            },
            "summary": {
                "avg_cpu_usage": round(float(summary[0] or 0.0), 1),
                "max_cpu_usage": round(float(summary[1] or 0.0), 1),
                "avg_memory_usage": round(float(summary[2] or 0.0), 1),
                "max_memory_usage": round(float(summary[3] or 0.0), 1),
                "total_jobs_executed": executed,
            },
        }

    # Configuration and control -----------------------------------------------------------

    async def set_config(self, runner_id: str, body: bodies.Config) -> bool:
        """Apply the given keys; returns whether the agent must restart for them."""
        row = await self.runner(runner_id)
        config = loads(row["config"], {})
        changed = body.model_dump(exclude_unset=True)
        restart = any(key in changed and changed[key] != config.get(key) for key in RESTART_KEYS)
        for key, value in changed.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        now = time.time()
        async with self.db.engine.begin() as session:
            await session.execute(
                update(RUNNERS)
                .where(RUNNERS.c.id == runner_id)
                .values(
                    config=dumps(config),
                    config_updated_at=now,
                    updated_at=now,
                    restart_required=bool(row["restart_required"] or restart),
                )
            )
        await self.wake(runner_id)
        return restart

    def connected(self, row: RowMapping) -> bool:
        """Whether the runner's agent sent a heartbeat recently."""
        last = row["last_heartbeat"]
        return last is not None and time.time() - last <= self.stale_after

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a runner is inactive."""
        return self.options.heartbeat_seconds * self.options.missed_heartbeats

    async def control(self, runner_id: str, action: str, stop: bodies.Stop | None = None) -> str:
        """Deliver start, stop or restart to the runner's live agent; returns the
        runner's state after it (RustCI's `starting`, `stopped`, `restarting`).

        :raises RunnerError: 503 RUNNER_UNAVAILABLE when no agent is connected.
        """
        row = await self.runner(runner_id)
        if not self.connected(row):
            raise errors.unavailable(runner_id, "no agent is connected")
        stop = stop or bodies.Stop()
        message = {
            "id": uuid.uuid4().hex,
            "action": action,
            "graceful": stop.graceful,
            "timeout": stop.timeout,
            "reason": stop.reason,
        }
        pending = [*loads(row["control"], []), message][-20:]
        state = {"start": "running", "stop": "stopped", "restart": "running"}[action]
        now = time.time()
        values: dict[str, Any] = {"control": dumps(pending), "state": state, "updated_at": now}
        new_status = row["status"]
        if action == "stop":
            new_status = "inactive"
        elif action == "start" and row["status"] == "inactive":
            new_status = "active"
        values["status"] = new_status
        if action == "restart":
            values["restart_required"] = False
        async with self.db.engine.begin() as session:
            await session.execute(update(RUNNERS).where(RUNNERS.c.id == runner_id).values(values))
        await self.wake(runner_id)
        await self.status_changed(runner_id, row["status"], new_status)
        what = f"{action} requested" + (f": {stop.reason}" if stop.reason else "")
        await self.runner_event(runner_id, "debug", what)
        return {"start": "starting", "stop": "stopped", "restart": "restarting"}[action]

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
