"""RustCI's runner API under `/api/runners`: management, status, jobs, logs,
configuration, control, bulk operations and the WebSocket of updates.

Permissions: `runners:read` for reads, `runners:manage` for registering, changing,
controlling and deleting runners, `runners:jobs` for submitting and cancelling jobs.
RustCI's documented clients (its curl examples, its Python and JavaScript SDKs) post with
their key only and no `Origin`, so every state-changing route is `allow_without_origin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from courtyard_sdk import ApiError, Blueprint, allow_without_origin
from courtyard_sdk.events import stream_to_websocket
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors as answers
from courtyard_sdk.openapi import responds
from pydantic import BaseModel, Field
from quart import request
from quart_schema import document_querystring, document_request

from . import bodies, errors, views
from .follow import follow_logs
from .formats import iso, loads, parse_time
from .service import Service
from .states import DEFAULT_RESOLUTION, METRIC_PERIODS, RESOLUTIONS

MAX_LIMIT = 1000
MAX_OFFSET = 10**9


class ListQuery(BaseModel):
    """`GET /api/runners`."""

    status: str | None = Field(default=None, description="active, inactive or error")
    type: str | None = Field(default=None, description="docker, kubernetes, native or local")
    tags: str | None = Field(default=None, description="comma-separated: runners with all")
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0)


class JobsQuery(BaseModel):
    """`GET /api/runners/{id}/jobs`."""

    status: str | None = Field(default=None, description="queued, running, completed, ...")
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0)


class LogsQuery(BaseModel):
    """`GET /api/runners/{id}/logs`."""

    since: str | None = Field(default=None, description="ISO 8601 time")
    until: str | None = Field(default=None, description="ISO 8601 time")
    level: str | None = Field(default=None, description="debug, info, warn or error: at least")
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    job_id: str | None = Field(default=None, description="only this job's lines")
    follow: bool = Field(default=False, description="stream as Server-Sent Events")


class MetricsQuery(BaseModel):
    """`GET /api/runners/{id}/metrics`."""

    period: str = Field(default="24h", description="1h, 24h, 7d or 30d")
    resolution: str | None = Field(default=None, description="1m, 5m or 1h")


class DeleteQuery(BaseModel):
    """`DELETE /api/runners/{id}`."""

    force: bool = Field(default=False, description="cancel the active jobs and delete")


def _int(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise errors.invalid(f"{name}: must be an integer", parameter=name) from None
    if not low <= value <= high:
        raise errors.invalid(f"{name}: must be between {low} and {high}", parameter=name)
    return value


def _choice(name: str, choices: tuple[str, ...] | list[str]) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise errors.invalid(f"{name}: must be one of {', '.join(choices)}", parameter=name)
    return value


def _flag(name: str) -> bool:
    value = request.args.get(name, "").lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise errors.invalid(f"{name}: must be true or false", parameter=name)


def _time(name: str) -> float | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise errors.invalid(f"{name}: must be an ISO 8601 time", parameter=name) from None


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    tags = [t.strip() for t in items if t.strip()]
    if any(not _usable(t) for t in tags):
        raise errors.invalid("tags: not usable values", parameter="tags")
    return tags


def _usable(value: str) -> bool:
    """Whether a path or query value can name something stored: no NUL (which PostgreSQL
    text cannot hold), no lone surrogate, at most 200 characters."""
    if "\x00" in value or len(value) > 200:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def refuse_unusable() -> None:
    """A `before_request` of the blueprints: a runner or job id that cannot exist is a
    404 at once, and a query value that cannot be stored a 400, before any query runs
    (after the route's own permission check: a 401 or 403 comes first)."""
    from courtyard_sdk.identity import PERMISSIONS_ATTRIBUTE, check
    from quart import current_app

    view = current_app.view_functions.get(request.endpoint or "")
    args = request.view_args or {}
    bad_path = [k for k, v in args.items() if isinstance(v, str) and not _usable(v)]
    bad_query = [k for k, v in request.args.items() if not _usable(v) and k != "tags"]
    if not bad_path and not bad_query:
        return
    check(*getattr(view, PERMISSIONS_ATTRIBUTE, ()))
    if "runner_id" in bad_path:
        raise errors.not_found(str(args["runner_id"])[:200].replace("\x00", ""))
    if bad_path:
        raise errors.job_not_found(str(args.get("runner_id", "")), "?")
    raise errors.invalid(f"{bad_query[0]}: not a usable value", parameter=bad_query[0])


def levels_from(level: str | None) -> list[str] | None:
    """The levels shown for `level`: it and the more severe ones."""
    if level is None:
        return None
    floor = views.LEVEL_ORDER[level]
    return [name for name, rank in views.LEVEL_ORDER.items() if rank >= floor]


def blueprint(
    service: Callable[[], Service], events: Callable[[], Any], audit: Callable[[], Any]
) -> Blueprint:
    """Every route of RustCI's runner API. `audit` gives the audit log (or None), for the
    domain events beside the runtime's own record of each request (never a token)."""
    bp = Blueprint("runners", __name__, url_prefix="/api/runners")

    async def record(action: str, target: str, **details: Any) -> None:
        log = audit()
        if log is not None:
            await log.record(action, target=target, details=details)

    answers((503, "RUNNERS_UNAVAILABLE"))(bp)
    bp.before_request(refuse_unusable)

    @bp.errorhandler(ApiError)
    async def envelope(exc: ApiError) -> Any:
        return errors.answer(exc)

    # Management --------------------------------------------------------------------------

    @bp.post("/register")
    @responds(201, "Registered: the runner's id and its token, shown this once")
    @answers((400, "INVALID_REQUEST"))
    @allow_without_origin
    @document_request(bodies.Register)
    @require("runners:manage")
    async def register() -> Any:
        """Register a runner; its `registration_token` is shown once (stored hashed)."""
        body = await bodies.body(bodies.Register)
        runner_id, token = await service().register(body)
        await record("runner.registered", runner_id, name=body.name, type=body.type)
        return {
            "success": True,
            "runner_id": runner_id,
            "registration_token": token,
            "message": "Runner registered successfully",
        }, 201

    @bp.get("")
    @answers((400, "INVALID_REQUEST"))
    @document_querystring(ListQuery)
    @require("runners:read")
    async def list_runners() -> dict[str, Any]:
        """Runners, filtered by `status`, `type` and `tags`, with `total_count`."""
        status = _choice("status", ("active", "inactive", "error"))
        kind = _choice("type", bodies.RUNNER_TYPES)
        limit = _int("limit", 50, 1, MAX_LIMIT)
        offset = _int("offset", 0, 0, MAX_OFFSET)
        rows, total = await service().runners(
            status, kind, _tags(request.args.get("tags")), limit, offset
        )
        return {
            "runners": [views.runner(r) for r in rows],
            "total_count": total,
            "has_more": offset + len(rows) < total,
        }

    @bp.get("/<runner_id>")
    @answers((404, "RUNNER_NOT_FOUND"))
    @require("runners:read")
    async def get_runner(runner_id: str) -> dict[str, Any]:
        """A runner with `statistics` from the jobs it ran."""
        svc = service()
        row = await svc.runner(runner_id)
        return {**views.runner(row), "statistics": await svc.statistics(row)}

    @bp.put("/<runner_id>")
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.Update)
    @require("runners:manage")
    async def update_runner(runner_id: str) -> dict[str, Any]:
        """Change a runner's name, capabilities, tags, resources or metadata."""
        body = await bodies.body(bodies.Update)
        await service().update(runner_id, body)
        await record("runner.updated", runner_id, fields=sorted(body.model_fields_set))
        return {"success": True, "message": "Runner updated successfully"}

    @bp.delete("/<runner_id>")
    @answers((404, "RUNNER_NOT_FOUND"), (409, "RUNNER_BUSY"))
    @allow_without_origin
    @document_querystring(DeleteQuery)
    @require("runners:manage")
    async def delete_runner(runner_id: str) -> dict[str, Any]:
        """Unregister a runner; refused while it has active jobs unless `force=true`,
        which cancels them."""
        cancelled = await service().delete(runner_id, _flag("force"))
        await record("runner.deleted", runner_id, cancelled_jobs=cancelled)
        return {
            "success": True,
            "message": "Runner deleted successfully",
            "cancelled_jobs": cancelled,
        }

    # Status, health, metrics ----------------------------------------------------------

    @bp.get("/<runner_id>/status")
    @answers((404, "RUNNER_NOT_FOUND"))
    @require("runners:read")
    async def runner_status(runner_id: str) -> dict[str, Any]:
        """Status, health, last heartbeat, load and capabilities."""
        svc = service()
        row = await svc.runner(runner_id)
        connected = svc.connected(row)
        _, queued = await svc.jobs(runner_id, "queued", 1, 0)
        return {
            "runner_id": runner_id,
            "status": row["status"],
            "state": row["state"],
            "health": views.health(row, connected)["health"],
            "last_heartbeat": iso(row["last_heartbeat"]),
            "current_load": {**views.current_load(row), "queued_jobs": queued},
            "capabilities_status": views.capabilities_status(row, connected),
        }

    @bp.get("/<runner_id>/health")
    @answers((404, "RUNNER_NOT_FOUND"))
    @require("runners:read")
    async def runner_health(runner_id: str) -> dict[str, Any]:
        """The health checks the agent's heartbeats measure."""
        svc = service()
        row = await svc.runner(runner_id)
        return views.health(row, svc.connected(row))

    @bp.get("/<runner_id>/metrics")
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"))
    @document_querystring(MetricsQuery)
    @require("runners:read")
    async def runner_metrics(runner_id: str) -> dict[str, Any]:
        """CPU, memory, disk and active jobs over `period`, per `resolution`."""
        period = _choice("period", list(METRIC_PERIODS)) or "24h"
        resolution = _choice("resolution", list(RESOLUTIONS)) or DEFAULT_RESOLUTION[period]
        return await service().metrics(runner_id, period, resolution)

    # Jobs ----------------------------------------------------------------------------------

    @bp.post("/<runner_id>/jobs")
    @responds(201, "Queued")
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"), (503, "RUNNER_UNAVAILABLE"))
    @allow_without_origin
    @document_request(bodies.Job)
    @require("runners:jobs")
    async def submit_job(runner_id: str) -> Any:
        """Queue a job on the runner."""
        body = await bodies.body(bodies.Job)
        job_id, start = await service().submit(runner_id, body)
        return {
            "success": True,
            "job_id": job_id,
            "runner_id": runner_id,
            "status": "queued",
            "estimated_start_time": iso(start),
        }, 201

    @bp.get("/<runner_id>/jobs")
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"))
    @document_querystring(JobsQuery)
    @require("runners:read")
    async def list_jobs(runner_id: str) -> dict[str, Any]:
        """The runner's jobs, newest first."""
        status = _choice("status", bodies.JOB_STATES)
        limit = _int("limit", 50, 1, MAX_LIMIT)
        offset = _int("offset", 0, 0, MAX_OFFSET)
        rows, total = await service().jobs(runner_id, status, limit, offset)
        return {
            "runner_id": runner_id,
            "jobs": [views.job(r) for r in rows],
            "total_count": total,
            "has_more": offset + len(rows) < total,
        }

    @bp.get("/<runner_id>/jobs/<job_id>")
    @answers((404, "RUNNER_NOT_FOUND"), (404, "JOB_NOT_FOUND"))
    @require("runners:read")
    async def get_job(runner_id: str, job_id: str) -> dict[str, Any]:
        """One job, with its steps and how each ended."""
        return views.job(await service().job(runner_id, job_id))

    @bp.post("/<runner_id>/jobs/<job_id>/cancel")
    @answers((404, "RUNNER_NOT_FOUND"), (404, "JOB_NOT_FOUND"), (409, "JOB_FINISHED"))
    @allow_without_origin
    @require("runners:jobs")
    async def cancel_job(runner_id: str, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once (`cancelled`), a running one by its agent
        (`cancelling`, then `cancelled`)."""
        status = await service().cancel(runner_id, job_id)
        await record("job.cancelled", f"{runner_id}/{job_id}", status=status)
        return {"success": True, "job_id": job_id, "status": status}

    # Logs ------------------------------------------------------------------------------

    @bp.get("/<runner_id>/logs")
    @responds(200, "Log entries; with follow=true, a text/event-stream", media_type=None)
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"))
    @document_querystring(LogsQuery)
    @require("runners:read")
    async def runner_logs(runner_id: str) -> Any:
        """The runner's log: its jobs' output and its events, oldest first; the newest
        `limit` entries of the range. `follow=true` streams new entries as Server-Sent
        Events (resume with `Last-Event-ID`)."""
        svc = service()
        await svc.runner(runner_id)
        since, until = _time("since"), _time("until")
        level = _choice("level", bodies.LEVELS)
        limit = _int("limit", 100, 1, MAX_LIMIT)
        job_id = request.args.get("job_id") or None
        if _flag("follow"):
            return await follow_logs(
                svc, runner_id, since, until, levels_from(level), job_id, limit
            )
        rows, total = await svc.logs(runner_id, since, until, levels_from(level), job_id, limit)
        return {
            "runner_id": runner_id,
            "logs": [views.log(r) for r in rows],
            "total_count": total,
            "has_more": len(rows) < total,
        }

    # Configuration -----------------------------------------------------------------------

    @bp.get("/<runner_id>/config")
    @answers((404, "RUNNER_NOT_FOUND"))
    @require("runners:read")
    async def get_config(runner_id: str) -> dict[str, Any]:
        """The runner's configuration."""
        row = await service().runner(runner_id)
        return {
            "runner_id": runner_id,
            "configuration": loads(row["config"], {}),
            "last_updated": iso(row["config_updated_at"]),
            "restart_required": bool(row["restart_required"]),
        }

    @bp.put("/<runner_id>/config")
    @answers((400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.Config)
    @require("runners:manage")
    async def put_config(runner_id: str) -> dict[str, Any]:
        """Change the configuration; the agent applies it live, except what needs its
        restart (`restart_required`: the executor)."""
        body = await bodies.body(bodies.Config)
        restart = await service().set_config(runner_id, body)
        await record("runner.configured", runner_id, keys=sorted(body.model_fields_set))
        return {
            "success": True,
            "message": "Configuration updated successfully",
            "restart_required": restart,
        }

    # Control ------------------------------------------------------------------------------

    def control_route(action: str, message: str) -> Callable[[str], Any]:
        async def control(runner_id: str) -> dict[str, Any]:
            stop = await bodies.body(bodies.Stop, optional=True)
            status = await service().control(runner_id, action, stop)
            await record(f"runner.{action}", runner_id, reason=stop.reason)
            return {"success": True, "message": message, "status": status}

        control.__name__ = f"{action}_runner"
        control.__doc__ = {
            "start": "Let the runner take jobs again (`starting`).",
            "stop": "Stop taking jobs; running ones finish (`graceful`, up to `timeout` "
            "seconds) or are cancelled at once (`stopped`).",
            "restart": "Restart the agent (`restarting`): it stops as for stop, applies "
            "the configuration that needs a restart, and takes jobs again.",
        }[action]
        return control

    for action, message in (
        ("start", "Runner started successfully"),
        ("stop", "Runner stopped successfully"),
        ("restart", "Runner restart initiated"),
    ):
        view = control_route(action, message)
        view = require("runners:manage")(view)
        view = document_request(bodies.Stop)(view)
        view = allow_without_origin(view)
        view = answers(
            (400, "INVALID_REQUEST"), (404, "RUNNER_NOT_FOUND"), (503, "RUNNER_UNAVAILABLE")
        )(view)
        bp.post(f"/<runner_id>/{action}")(view)

    # Bulk -------------------------------------------------------------------------------------

    @bp.post("/bulk")
    @answers((400, "INVALID_REQUEST"))
    @allow_without_origin
    @document_request(bodies.Bulk)
    @require("runners:manage")
    async def bulk() -> dict[str, Any]:
        """Apply one operation to every runner the filters select."""
        body = await bodies.body(bodies.Bulk)
        config = stop = None
        force = False
        if body.operation == "update_config":
            config = bodies.check(bodies.Config, body.data)
        elif body.operation in ("stop", "restart"):
            stop = bodies.check(bodies.Stop, body.data)
        elif body.operation == "delete":
            force = bool(body.data.get("force", False))
        svc = service()
        rows, _ = await svc.runners(
            body.filters.status, body.filters.type, _tags(body.filters.tags)
        )
        results = []
        for row in rows:
            result: dict[str, Any] = {"runner_id": row["id"], "success": True}
            try:
                if config is not None:
                    result["restart_required"] = await svc.set_config(row["id"], config)
                elif body.operation == "delete":
                    await svc.delete(row["id"], force)
                else:
                    result["status"] = await svc.control(row["id"], body.operation, stop)
            except ApiError as exc:
                result = {
                    "runner_id": row["id"],
                    "success": False,
                    "error": {"code": exc.code, "message": exc.message},
                }
            results.append(result)
        affected = sum(1 for r in results if r["success"])
        await record("runner.bulk", body.operation, matched=len(results), affected=affected)
        return {
            "success": all(r["success"] for r in results),
            "affected_runners": affected,
            "results": results,
        }

    # Updates -------------------------------------------------------------------------------

    @bp.websocket("/ws")
    @require("runners:read")
    async def updates() -> None:
        """`runner_status_change` and `job_status_change` frames, as they happen
        (resume with `?lastEventId=`)."""
        await stream_to_websocket(
            events(), "runners.status", "runners.job", transform=lambda event: event.data
        )

    return bp
