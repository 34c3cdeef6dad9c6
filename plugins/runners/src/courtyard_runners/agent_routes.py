"""The agent protocol: `/api/runners/{id}/agent/...`, which only `courtyard runner start`
calls.

The agent authenticates with its runner's registration token in `X-Runner-Token` (not
`Authorization`: the runtime reads that header as one of its own credentials and would
refuse a runner token when auth is on). The token is compared with the stored SHA-256 in
constant time. Agents are programs without an `Origin`, so every route is
`allow_without_origin`; the token is what guards them.

- `POST .../agent/heartbeat`: load and checks, every `heartbeat_seconds`.
- `POST .../agent/poll`: the one outbound long poll: waits up to `wait` seconds and
  answers jobs to run (claimed: `running`), cancels, control messages and the
  configuration, as soon as there are any.
- `POST .../agent/jobs/{job_id}/logs`: a batch of output lines; answers `cancel`.
- `POST .../agent/jobs/{job_id}/finish`: how the attempt ended.
- `POST .../agent/logs`: runner events that belong to no job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from courtyard_sdk import ApiError, Blueprint, allow_without_origin
from courtyard_sdk.events import retiring_signal
from courtyard_sdk.openapi import errors as answers
from quart import request
from quart_schema import document_request

from . import bodies, errors
from .routes import refuse_unusable
from .service import Service


def blueprint(service: Callable[[], Service]) -> Blueprint:
    """Every agent route."""
    bp = Blueprint("agent", __name__, url_prefix="/api/runners/<runner_id>/agent")
    answers((401, "INVALID_RUNNER_TOKEN"), (503, "RUNNERS_UNAVAILABLE"))(bp)
    bp.before_request(refuse_unusable)

    @bp.errorhandler(ApiError)
    async def envelope(exc: ApiError) -> Any:
        return errors.answer(exc)

    async def runner(runner_id: str) -> Any:
        return await service().authenticate(runner_id, request.headers.get("X-Runner-Token"))

    @bp.post("/heartbeat")
    @allow_without_origin
    @document_request(bodies.Heartbeat)
    async def heartbeat(runner_id: str) -> dict[str, Any]:
        """Record the agent's load, checks and state."""
        row = await runner(runner_id)
        body = await bodies.body(bodies.Heartbeat)
        return await service().heartbeat(row, body)

    @bp.post("/poll")
    @allow_without_origin
    @document_request(bodies.Poll)
    async def poll(runner_id: str) -> dict[str, Any]:
        """Wait for work: jobs, cancels, control; with the configuration."""
        row = await runner(runner_id)
        body = await bodies.body(bodies.Poll)
        claimed = await service().poll(row, body, retiring_signal())
        return {
            "jobs": claimed.jobs,
            "cancel": claimed.cancel,
            "control": claimed.control,
            "config": claimed.config,
            "config_version": claimed.config_version,
            "capabilities": claimed.capabilities,
        }

    @bp.post("/jobs/<job_id>/logs")
    @answers((404, "JOB_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.Lines)
    async def job_logs(runner_id: str, job_id: str) -> dict[str, Any]:
        """Store a batch of a job's lines; `cancel` says whether to stop it."""
        row = await runner(runner_id)
        body = await bodies.body(bodies.Lines)
        svc = service()
        await svc.job(row["id"], job_id)
        await svc.append_logs(row["id"], job_id, body.lines)
        return {"stored": len(body.lines), "cancel": await svc.cancel_requested(row["id"], job_id)}

    @bp.post("/logs")
    @allow_without_origin
    @document_request(bodies.Lines)
    async def runner_logs(runner_id: str) -> dict[str, Any]:
        """Store runner events that belong to no job."""
        row = await runner(runner_id)
        body = await bodies.body(bodies.Lines)
        await service().append_logs(row["id"], None, body.lines)
        return {"stored": len(body.lines)}

    @bp.post("/jobs/<job_id>/finish")
    @answers((404, "JOB_NOT_FOUND"), (409, "JOB_NOT_RUNNING"))
    @allow_without_origin
    @document_request(bodies.Finish)
    async def finish(runner_id: str, job_id: str) -> dict[str, Any]:
        """Record how the attempt ended (`retried` when it goes back to the queue)."""
        row = await runner(runner_id)
        body = await bodies.body(bodies.Finish)
        return {"status": await service().finish(row, job_id, body)}

    return bp
