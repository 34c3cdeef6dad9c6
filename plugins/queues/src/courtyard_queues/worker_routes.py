"""The worker protocol over HTTP (`/worker/...`, permission `queues:work`).

`POST /worker/register` answers exactly what runqy's API documents (the Redis address only
for the Redis backend: Courtyard's workers never talk to Redis themselves) plus a
`courtyard` block with the lease, heartbeat and poll intervals. The rest is Courtyard's
own: a long-polling dequeue that leases a task, lease renewal (which also tells the
worker when its task was cancelled), and the task's outcome: complete, fail or release.
See docs/queues.md, "The worker protocol".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from courtyard_sdk import ApiError, Blueprint, Response, allow_without_origin
from courtyard_sdk.events import retiring_signal
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors, responds
from quart_schema import document_request, document_response

from . import bodies, formats
from . import errors as errors_
from .guards import refuse_unusable_path
from .registry import Entry
from .service import QueueService
from .store import LeaseLost, Report, Settled, TaskNotFound, Worker

VaultValues = Callable[[list[str]], Awaitable[dict[str, str]]]


def redis_block(url: str | None) -> dict[str, Any]:
    """runqy's `redis` object for a Redis URL; empty values without one."""
    if not url:
        return {"addr": "", "password": "", "db": 0}
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return {
        "addr": f"{parts.hostname or 'localhost'}:{parts.port or 6379}",
        "password": parts.password or "",
        "db": int(path) if path.isdigit() else 0,
    }


def deployment_block(entry: Entry) -> dict[str, Any]:
    """runqy's `deployment` object (plus `code_path` when set, and `mode`)."""
    deployment = entry.config.deployment
    out: dict[str, Any] = {
        "git_url": deployment.git_url,
        "branch": deployment.branch,
        "startup_cmd": deployment.startup_cmd,
        "startup_timeout_secs": deployment.startup_timeout_secs,
        "requirements_file": deployment.requirements_file,
        "vaults": list(deployment.vaults),
        "mode": entry.config.effective_mode,
    }
    if deployment.code_path:
        out["code_path"] = deployment.code_path
    return out


def _report_outcome(outcome: Settled | TaskNotFound | LeaseLost) -> dict[str, Any]:
    """One report's outcome in `POST /worker/batch`'s answer: the task's new state, or
    the error its own route would have answered."""
    if isinstance(outcome, Settled):
        return {"task_id": outcome.id, "state": outcome.state}
    task_id = str(outcome.args[0]) if outcome.args else ""
    refusal = (
        errors_.task_not_found(task_id)
        if isinstance(outcome, TaskNotFound)
        else errors_.lease_lost(task_id)
    )
    return {"task_id": task_id, "error": {"code": refusal.code, "message": refusal.message}}


def no_content() -> Response:
    """204 with no body, no `Content-Type` (Quart's default is text/html: wrong for an
    answer without content) and no `Content-Length` (RFC 9110 forbids it on a 204)."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    return response


def worker_routes(
    service: Callable[[], QueueService],
    vault_values: Callable[[], VaultValues | None],
    redis_url: str | None,
) -> Blueprint:
    """Every `/worker/...` route. Workers are programs that send their key and no
    `Origin`, so every route is marked `allow_without_origin`."""
    bp = Blueprint("worker", __name__, url_prefix="/worker")
    errors((503, "QUEUES_UNAVAILABLE"))(bp)
    bp.before_request(refuse_unusable_path)

    @bp.post("/register")
    @errors((404, "QUEUE_NOT_FOUND"), (500, "VAULTS_UNAVAILABLE"))
    @allow_without_origin
    @document_request(bodies.Register)
    @require("queues:work")
    async def register() -> dict[str, Any]:
        """Register a worker for a queue (a parent queue: all its sub-queues) and get its
        configuration, with the decrypted values of the vaults its deployment names."""
        body = await bodies.body(bodies.Register)
        svc = service()
        queues, entry = await svc.worker_queues(body.queue)
        names = list(entry.config.deployment.vaults)
        values: dict[str, str] = {}
        if names:
            resolve = vault_values()
            if resolve is None:
                raise ApiError(
                    500,
                    "VAULTS_UNAVAILABLE",
                    f"vaults {names} requested for queue {body.queue} but the vaults plugin "
                    "is not loaded",
                )
            try:
                values = await resolve(names)
            except ApiError as exc:
                raise ApiError(
                    500, "VAULTS_UNAVAILABLE", f"failed to resolve vaults {names}: {exc.message}"
                ) from None
        await svc.save_worker(
            Worker(
                worker_id=body.worker_id,
                queue=body.queue,
                status="registered",
                concurrency=body.concurrency,
                hostname=body.hostname,
                version=body.version,
            )
        )
        config = entry.config
        priority = config.priority_of(queues[0]) if len(queues) == 1 else config.top_priority
        options = svc.options
        return {
            "redis": redis_block(redis_url),
            "queue": {"name": body.queue, "priority": priority, "mode": config.effective_mode},
            "deployment": deployment_block(entry),
            "vaults": values,
            "courtyard": {
                "lease_seconds": options.lease_seconds,
                "heartbeat_seconds": options.heartbeat_seconds,
                "poll_seconds": options.poll_seconds,
                "sub_queues": [{"name": q, "priority": config.priority_of(q)} for q in queues],
            },
        }

    @bp.post("/dequeue")
    @responds(200, "A task, leased to the worker")
    @responds(204, "No task came within `wait` seconds", media_type=None)
    @errors((404, "QUEUE_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.Dequeue)
    @require("queues:work")
    async def dequeue() -> Any:
        """Lease the next task, waiting up to `wait` seconds for one (204: none came)."""
        body = await bodies.body(bodies.Dequeue)
        task = await service().dequeue(body.worker_id, body.queue, body.wait, retiring_signal())
        if task is None:
            return no_content()
        return {"task": formats.leased(task)}

    @bp.post("/batch")
    @document_response(bodies.BatchAnswer)
    @errors((404, "QUEUE_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.Batch)
    @require("queues:work")
    async def batch() -> dict[str, Any]:
        """Record several reports (completions and failures) and lease up to `lease`
        tasks in one request, waiting up to `wait` seconds when none is ready."""
        body = await bodies.body(bodies.Batch)
        reports = [
            Report(task_id=r.task_id, result=r.result, error=r.error, retry=r.retry)
            for r in body.reports
        ]
        done = await service().exchange(
            body.worker_id, body.queue, reports, body.lease, body.wait, retiring_signal()
        )
        return {
            "reports": [_report_outcome(outcome) for outcome in done.settled],
            "tasks": [formats.leased(task) for task in done.leased],
        }

    @bp.post("/tasks/<task_id>/renew")
    @errors((404, "TASK_NOT_FOUND"), (409, "LEASE_LOST"))
    @allow_without_origin
    @document_request(bodies.WorkerOnly)
    @require("queues:work")
    async def renew(task_id: str) -> dict[str, Any]:
        """Extend the lease; `cancel: true` tells the worker to stop the task."""
        body = await bodies.body(bodies.WorkerOnly)
        renewal = await service().renew(task_id, body.worker_id)
        return {"lease_expires_at": renewal.lease_expires_at, "cancel": renewal.cancel}

    @bp.post("/tasks/<task_id>/complete")
    @errors((404, "TASK_NOT_FOUND"), (409, "LEASE_LOST"))
    @allow_without_origin
    @document_request(bodies.Complete)
    @require("queues:work")
    async def complete(task_id: str) -> dict[str, Any]:
        """Record the task's result; with `next_queue`, lease the next task of that queue
        without waiting (`next`: the task as `/worker/dequeue` gives it, or null)."""
        body = await bodies.body(bodies.Complete)
        svc = service()
        task = await svc.complete(task_id, body.worker_id, body.result)
        if body.next_queue is None:
            return {"state": task.state}
        try:
            leased = await svc.dequeue(body.worker_id, body.next_queue, 0.0)
        except ApiError:  # the queue went away: the completion stands, the worker polls
            leased = None
        return {"state": task.state, "next": None if leased is None else formats.leased(leased)}

    @bp.post("/tasks/<task_id>/fail")
    @errors((404, "TASK_NOT_FOUND"), (409, "LEASE_LOST"))
    @allow_without_origin
    @document_request(bodies.Fail)
    @require("queues:work")
    async def fail(task_id: str) -> dict[str, Any]:
        """Record a failed run: `retry` after a backoff while retries remain, else
        `archived` (at once with `retry: false`)."""
        body = await bodies.body(bodies.Fail)
        task = await service().fail(task_id, body.worker_id, body.error, body.retry)
        return {"state": task.state}

    @bp.post("/tasks/<task_id>/release")
    @errors((404, "TASK_NOT_FOUND"), (409, "LEASE_LOST"))
    @allow_without_origin
    @document_request(bodies.WorkerOnly)
    @require("queues:work")
    async def release(task_id: str) -> dict[str, Any]:
        """Hand the task back unrun (a worker stopping): pending again, first in line."""
        body = await bodies.body(bodies.WorkerOnly)
        task = await service().release(task_id, body.worker_id)
        return {"state": task.state}

    @bp.post("/heartbeat")
    @allow_without_origin
    @document_request(bodies.Heartbeat)
    @require("queues:work")
    async def heartbeat() -> dict[str, Any]:
        """Keep the worker listed, with its status and the tasks it runs."""
        body = await bodies.body(bodies.Heartbeat)
        saved = await service().save_worker(
            Worker(
                worker_id=body.worker_id,
                queue=body.queue,
                status=body.status,
                concurrency=body.concurrency,
                active_tasks=body.active_tasks,
                hostname=body.hostname,
                version=body.version,
            )
        )
        return {"worker_id": saved.worker_id, "last_beat": int(saved.last_beat)}

    return bp
