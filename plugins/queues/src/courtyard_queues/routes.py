"""runqy's queue and CLI endpoints: `/queue/...` for clients (runqy's Python client
among them) and `/api/cli/...` for remote management.

Permissions: `queues:read` for reads, `queues:write` for enqueueing, pausing,
cancelling and deleting, `queues:configure` for queue configurations (they say what
code workers run, so the built-in `editor` role does not get them). `RUNQY_API_KEY`
holds them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from courtyard_sdk import ApiError, Blueprint, allow_without_origin
from courtyard_sdk.events import retiring_signal
from courtyard_sdk.identity import check, require
from courtyard_sdk.openapi import errors as answers
from courtyard_sdk.openapi import responds
from quart import request
from quart_schema import document_querystring, document_request

from . import bodies, errors, formats
from .config import ConfigError, QueueConfig, normalize, parse_queue
from .guards import refuse_unusable_path
from .limits import MAX_CURSOR_DIGITS
from .registry import ConfigConflict
from .service import QueueService, Request
from .store import STATES, TaskActive, TaskFinished, TaskNotFound

MAX_LIMIT = 1000


def options(body: bodies.TaskOptions, timeout: float | None = None) -> Request:
    """The task options of a body (`timeout` as the default when it gives none)."""
    return Request(
        timeout=body.timeout if body.timeout is not None else timeout,
        type=body.type,
        max_retry=body.max_retry,
        process_at=body.process_at,
        process_in=body.process_in,
        unique_key=body.unique_key,
        unique=body.unique,
        unique_ttl=body.unique_ttl,
        retention=body.retention,
    )


async def read_add_task() -> tuple[str, Any, Request]:
    """`queue`, payload and options of an add-task body, nested (`data`) or flat."""
    raw = await bodies.raw_json()
    if isinstance(raw, dict) and "data" not in raw:
        flat = bodies.check(bodies.FlatTask, raw)
        payload = {k: v for k, v in raw.items() if k not in ("queue", "timeout")}
        return flat.queue, payload, Request(timeout=flat.timeout)
    body = bodies.check(bodies.AddTask, raw)
    return body.queue, body.data, options(body)


def queue_routes(service: Callable[[], QueueService], public_status: bool) -> Blueprint:
    """`POST /queue/add`, `POST /queue/add-batch`, `GET /queue/{task_id}`."""
    bp = Blueprint("queue", __name__, url_prefix="/queue")
    answers((503, "QUEUES_UNAVAILABLE"))(bp)
    bp.before_request(refuse_unusable_path)

    # runqy's Python client posts to /add and /add-batch with its key only, no Origin.
    @bp.post("/add")
    @answers((400, "INVALID_PAYLOAD"), (404, "QUEUE_NOT_FOUND"), (409, "DUPLICATE_TASK"))
    @allow_without_origin
    @document_request(bodies.AddTask)
    @require("queues:write")
    async def add_task() -> dict[str, Any]:
        """Enqueue a task (runqy's body: `queue`, `timeout`, `data`)."""
        queue, payload, request_options = await read_add_task()
        task = await service().enqueue(queue, payload, request_options)
        return {"info": formats.info(task, with_result=False)}

    @bp.post("/add-batch")
    @answers((400, "BATCH_TOO_LARGE"), (404, "QUEUE_NOT_FOUND"))
    @allow_without_origin
    @document_request(bodies.AddBatch)
    @require("queues:write")
    async def add_batch() -> dict[str, Any]:
        """Enqueue many tasks: `{"queue", "timeout", "jobs": [{"timeout", "data"}]}`."""
        body = await bodies.body(bodies.AddBatch)
        if not body.jobs:
            raise errors.invalid("jobs array cannot be empty")
        await service().client_queue(body.queue)  # 404 for an unknown queue, jobs or not
        jobs: list[tuple[Any, Request]] = []
        problems: list[str] = []
        for index, job in enumerate(body.jobs):
            if isinstance(job, dict) and "data" in job:
                try:
                    parsed = bodies.check(bodies.Job, job)
                except ApiError as exc:
                    problems.append(f"job {index}: {exc.message}")
                    continue
                jobs.append((parsed.data, options(parsed, body.timeout)))
            else:  # runqy's server takes a job without `data` as the payload itself
                jobs.append((job, Request(timeout=body.timeout)))
        ids, failures = await service().enqueue_batch(body.queue, jobs) if jobs else ([], [])
        errors_ = problems + failures
        return {
            "enqueued": len(ids),
            "failed": len(errors_),
            "task_ids": ids,
            "errors": errors_,
        }

    @bp.get("/<task_id>")
    @answers((403, "AUTHORIZATION_FAILED"), (404, "TASK_NOT_FOUND"), (408, "TIMEOUT"))
    @document_querystring(bodies.StatusQuery)
    async def task_status(task_id: str) -> Any:
        """A task's state and result; `?wait=true` waits (30 s at most) for it to finish."""
        if not public_status:
            check("queues:read")
        if request.args.get("wait") == "true":
            task = await service().wait_finished(task_id, stop=retiring_signal())
            if task is None:
                raise ApiError(408, "TIMEOUT", "timeout waiting for task result")
        else:
            task = await service().get(task_id)
        return {"info": formats.info(task)}

    return bp


def cli_routes(service: Callable[[], QueueService]) -> Blueprint:
    """Everything under `/api/cli/`."""
    bp = Blueprint("cli", __name__, url_prefix="/api/cli")
    answers((503, "QUEUES_UNAVAILABLE"))(bp)
    bp.before_request(refuse_unusable_path)
    # runqy's API documents /api/cli as the API of runqy's CLI: its state-changing routes
    # are marked `allow_without_origin`, since the CLI sends its key and no Origin.

    async def known_queue(name: str) -> tuple[str, Any]:
        full = normalize(name)
        entry = await service().registry.sub_queue(full)
        if entry is None and full not in await service().store.queues():
            raise errors.queue_not_found(name, full)
        return full, entry

    # Queues ------------------------------------------------------------------------------

    @bp.get("/queues")
    @require("queues:read")
    async def list_queues() -> dict[str, Any]:
        """Every queue (configured, or holding tasks) with its statistics."""
        svc = service()
        entries = await svc.registry.entries()
        owners = {full: e for e in entries.values() for full in e.config.full_names}
        names = sorted(owners.keys() | set(await svc.store.queues()))
        stats = await svc.store.stats(names)
        return {"queues": [formats.queue(stats[n], owners.get(n)) for n in names]}

    @bp.get("/queues/<queue>")
    @answers((404, "QUEUE_NOT_FOUND"))
    @require("queues:read")
    async def get_queue(queue: str) -> dict[str, Any]:
        """One queue's statistics."""
        full, entry = await known_queue(queue)
        stats = await service().store.stats([full])
        return formats.queue(stats[full], entry)

    @bp.post("/queues/<queue>/pause")
    @answers((404, "QUEUE_NOT_FOUND"))
    @allow_without_origin
    @require("queues:write")
    async def pause(queue: str) -> dict[str, Any]:
        """Stop dequeues from a queue, at once."""
        full, _ = await known_queue(queue)
        await service().store.pause(full)
        return {"message": "queue paused", "queue": full}

    @bp.post("/queues/<queue>/unpause")
    @answers((404, "QUEUE_NOT_FOUND"))
    @allow_without_origin
    @require("queues:write")
    async def unpause(queue: str) -> dict[str, Any]:
        """Let dequeues from a queue go on."""
        full, _ = await known_queue(queue)
        await service().store.unpause(full)
        service().notifier.ready(full)
        return {"message": "queue unpaused", "queue": full}

    # Tasks -------------------------------------------------------------------------------

    @bp.post("/tasks")
    @answers((400, "INVALID_PAYLOAD"), (404, "QUEUE_NOT_FOUND"), (409, "DUPLICATE_TASK"))
    @allow_without_origin
    @document_request(bodies.AddTask)
    @require("queues:write")
    async def enqueue() -> dict[str, Any]:
        """Enqueue a task (the body of `POST /queue/add`)."""
        queue, payload, request_options = await read_add_task()
        task = await service().enqueue(queue, payload, request_options)
        return {"info": formats.info(task, with_result=False)}

    @bp.get("/queues/<queue>/tasks")
    @answers((400, "INVALID_STATE"), (404, "QUEUE_NOT_FOUND"))
    @document_querystring(bodies.TaskListQuery)
    @require("queues:read")
    async def list_tasks(queue: str) -> dict[str, Any]:
        """A page of a queue's tasks in one state: `?state=pending&limit=10&cursor=...`."""
        full, _ = await known_queue(queue)
        state = request.args.get("state", "pending")
        if state not in STATES:
            raise errors.invalid(
                f"invalid state '{state}', valid: {', '.join(STATES)}", "INVALID_STATE"
            )
        try:
            limit = int(request.args.get("limit", "10"))
        except ValueError:
            raise errors.invalid("limit must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise errors.invalid(f"limit must be between 1 and {MAX_LIMIT}")
        cursor = request.args.get("cursor") or None
        # ASCII digits only (str.isdigit takes '²'), few enough for a 64-bit integer.
        if cursor is not None and not (
            cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_DIGITS
        ):
            raise errors.invalid("cursor must be the next_cursor of a previous page")
        page = await service().store.list_tasks(full, state, limit, cursor)
        return {"tasks": [formats.cli_task(t) for t in page.tasks], "next_cursor": page.cursor}

    @bp.get("/queues/<queue>/tasks/<task_id>")
    @answers((404, "TASK_NOT_FOUND"))
    @require("queues:read")
    async def get_task(queue: str, task_id: str) -> dict[str, Any]:
        """One task of a queue."""
        task = await service().store.get(task_id)
        if task is None or task.queue != normalize(queue):
            raise errors.task_not_found(task_id)
        return formats.cli_task(task)

    @bp.delete("/tasks/<task_id>")
    @answers((404, "TASK_NOT_FOUND"), (409, "TASK_FINISHED"))
    @allow_without_origin
    @require("queues:write")
    async def cancel_task(task_id: str) -> dict[str, Any]:
        """Cancel a task: a waiting one is archived as `cancelled`, an active one is told
        to stop at its worker's next lease renewal."""
        svc = service()
        try:
            task = await svc.store.cancel(task_id)
        except TaskNotFound:
            raise errors.task_not_found(task_id) from None
        except TaskFinished as exc:
            raise errors.conflict(
                "TASK_FINISHED", f"task '{task_id}' is {exc.state} and cannot be cancelled"
            ) from None
        if task.state != "active":
            svc.notifier.finished(task.id)
        return {"message": "task cancelled", "task_id": task_id, "state": task.state}

    @bp.delete("/queues/<queue>/tasks/<task_id>")
    @answers((404, "TASK_NOT_FOUND"), (409, "TASK_ACTIVE"))
    @allow_without_origin
    @require("queues:write")
    async def delete_task(queue: str, task_id: str) -> dict[str, Any]:
        """Delete a task that is not running (cancel a running one first)."""
        try:
            await service().store.delete(normalize(queue), task_id)
        except TaskNotFound:
            raise errors.task_not_found(task_id) from None
        except TaskActive:
            raise errors.conflict(
                "TASK_ACTIVE", f"task '{task_id}' is running: cancel it first"
            ) from None
        return {"message": "task deleted", "task_id": task_id}

    # Workers -----------------------------------------------------------------------------

    @bp.get("/workers")
    @require("queues:read")
    async def list_workers() -> dict[str, Any]:
        """Every worker heard from lately (stale after 3 missed heartbeats)."""
        svc = service()
        now = await svc.store.now()
        stale = svc.options.stale_after
        workers = [formats.worker(w, now, stale) for w in await svc.store.workers()]
        return {"workers": workers, "count": len(workers)}

    @bp.get("/workers/<worker_id>")
    @answers((404, "WORKER_NOT_FOUND"))
    @require("queues:read")
    async def get_worker(worker_id: str) -> dict[str, Any]:
        """One worker."""
        svc = service()
        found = await svc.store.worker(worker_id)
        if found is None:
            raise errors.worker_not_found(worker_id)
        return formats.worker(found, await svc.store.now(), svc.options.stale_after)

    # Configs -----------------------------------------------------------------------------

    @bp.get("/configs")
    @require("queues:read")
    async def list_configs() -> dict[str, Any]:
        """Every queue configuration: one summary line per sub-queue, and each in full."""
        entries = await service().registry.entries()
        summaries = formats.config_summaries(entries)
        return {
            "queues": summaries,
            "configs": [formats.config(entries[name]) for name in sorted(entries)],
            "count": len(summaries),
        }

    @bp.post("/configs/reload")
    @allow_without_origin
    @require("queues:configure")
    async def reload_configs() -> dict[str, Any]:
        """Read the configured YAML files again."""
        report = await service().registry.load_files()
        return {
            "reloaded": report.reloaded,
            "removed": report.removed,
            "errors": report.errors,
            "warnings": report.warnings,
            "timestamp": report.timestamp,
        }

    @bp.post("/configs")
    @responds(201, "The queue configuration, created or (`?force=true`) replaced")
    @answers((400, "INVALID_CONFIG"), (409, "CONFIG_CONFLICT"))
    @allow_without_origin
    @document_request(QueueConfig)  # the body: a queue as runqy's YAML has it
    @require("queues:configure")
    async def create_config() -> tuple[dict[str, Any], int]:
        """Create a queue configuration (a runqy YAML queue entry as JSON, with `name`);
        `?force=true` replaces one created before."""
        raw = await bodies.raw_json()
        named = bodies.check(bodies.CreateConfig, raw)
        document = {k: v for k, v in raw.items() if k != "name"}
        try:
            config = parse_queue(named.name, document)
        except ConfigError as exc:
            raise errors.invalid(str(exc), "INVALID_CONFIG") from None
        registry = service().registry
        try:
            replaced = await registry.create(config, request.args.get("force") == "true")
        except ConfigConflict as exc:
            raise errors.conflict("CONFIG_CONFLICT", str(exc)) from None
        entry = await registry.get(config.name)
        message = "Queue updated successfully" if replaced else "Queue created successfully"
        body = formats.config(entry) if entry else formats.config_json(config)
        return {"queue": body, "message": message}, 201

    @bp.delete("/configs/<name>")
    @answers((404, "CONFIG_NOT_FOUND"), (409, "CONFIG_CONFLICT"))
    @allow_without_origin
    @require("queues:configure")
    async def delete_config(name: str) -> dict[str, Any]:
        """Delete a queue configuration created through the API (its tasks stay)."""
        try:
            removed = await service().registry.remove(name)
        except ConfigConflict as exc:
            raise errors.conflict("CONFIG_CONFLICT", str(exc)) from None
        if not removed:
            raise errors.config_not_found(name)
        return {"message": "queue configuration deleted", "name": name}

    return bp
