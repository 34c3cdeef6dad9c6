"""Runners as records: registration, lookups and filters, changes, removal, their
statistics and metrics from stored samples, their configuration and control messages."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import RowMapping

from . import bodies, errors
from .formats import dumps, iso, loads
from .states import (
    ACTIVE,
    FINISHED,
    KEEP_SAMPLES,
    METRIC_PERIODS,
    RESOLUTIONS,
    RESTART_KEYS,
    default_config,
    hash_token,
)
from .tables import JOBS, LOGS, RUNNERS, SAMPLES


class RunnerRecords:
    """Part of `Service` (service.py); its methods use the service's `db`, `options`,
    `log` and `notifier`."""

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
