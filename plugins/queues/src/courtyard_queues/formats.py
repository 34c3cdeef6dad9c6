"""How tasks, queues and workers look in answers, shaped like runqy's own.

runqy's answers carry payloads and results as JSON text (`"payload": "{\\"a\\":1}"`),
which its Python client decodes; the same goes here. Times are RFC 3339 in UTC
(`2024-01-15T10:30:00Z`); absent ones are null.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .config import format_duration, split_name
from .registry import Entry
from .store import QueueStats, Task, Worker


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as `2024-01-15T10:30:00Z`."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def info(task: Task, *, with_result: bool = True) -> dict[str, Any]:
    """The `info` object of `/queue/add` and `GET /queue/{task_id}` (seed 001 names `id`,
    `queue`, `state` and `result`; the rest is what runqy's server adds)."""
    out: dict[str, Any] = {
        "id": task.id,
        "queue": task.queue,
        "state": task.state,
        "type": task.type,
        "payload": _text(task.payload),
        "max_retry": task.max_retry,
        "retried": task.retry_count,
        "last_err": task.last_error or "",
        "last_failed_at": timestamp(task.last_failed_at),
        "timeout": task.timeout,
        "deadline": timestamp(task.deadline),
        "next_process_at": timestamp(task.process_at),
        "completed_at": timestamp(task.completed_at),
    }
    if with_result:
        out["result"] = _text(task.result) if task.has_result else None
    return out


def cli_task(task: Task) -> dict[str, Any]:
    """A task in the CLI API (runqy's `TaskInfoResponse`: `timeout` as a Go duration)."""
    out: dict[str, Any] = {
        "id": task.id,
        "type": task.type,
        "queue": task.queue,
        "state": task.state,
        "payload": _text(task.payload),
        "max_retry": task.max_retry,
        "retried": task.retry_count,
        "last_err": task.last_error or "",
        "timeout": format_duration(task.timeout),
        "deadline": timestamp(task.deadline),
        "next_process_at": timestamp(task.process_at),
        "completed_at": timestamp(task.completed_at),
        "result": _text(task.result) if task.has_result else None,
        "created_at": timestamp(task.created_at),
        "cancel_requested": task.cancel_requested,
    }
    if task.unique_key:
        out["unique_key"] = task.unique_key
    return out


def leased(task: Task) -> dict[str, Any]:
    """A dequeued task, as the worker protocol hands it over."""
    return {
        "task_id": task.id,
        "type": task.type,
        "payload": task.payload,
        "retry_count": task.retry_count,
        "max_retry": task.max_retry,
        "queue": task.queue,
        "timeout": task.timeout,
        "lease_expires_at": task.lease_expires_at,
    }


def queue(stats: QueueStats, entry: Entry | None) -> dict[str, Any]:
    """A sub-queue with its statistics (runqy's `QueueInfoResponse`, plus size, counters
    and priority)."""
    out: dict[str, Any] = {
        "queue": stats.queue,
        "pending": stats.pending,
        "active": stats.active,
        "scheduled": stats.scheduled,
        "retry": stats.retry,
        "archived": stats.archived,
        "completed": stats.completed,
        "paused": stats.paused,
        "size": stats.size,
        "processed": stats.processed,
        "failed": stats.failed,
    }
    if entry is not None:
        out["priority"] = entry.config.priority_of(stats.queue)
        out["parent"] = split_name(stats.queue)[0]
        out["strict_priority"] = entry.config.strict_priority
    return out


def worker(item: Worker, now: float, stale_after: float) -> dict[str, Any]:
    """A worker (runqy's `WorkerInfo`: Unix times, `queues` as a string)."""
    return {
        "worker_id": item.worker_id,
        "started_at": int(item.started_at),
        "last_beat": int(item.last_beat),
        "concurrency": item.concurrency,
        "queues": item.queue,
        "status": item.status,
        "is_stale": now - item.last_beat > stale_after,
        "active_tasks": item.active_tasks,
        "hostname": item.hostname,
        "version": item.version,
    }


def config_summaries(entries: dict[str, Entry]) -> list[dict[str, Any]]:
    """One line per sub-queue, as runqy's `GET /workers/queues` lists them."""
    rows = []
    for name in sorted(entries):
        entry = entries[name]
        config = entry.config
        for sub in config.subs:
            rows.append(
                {
                    "name": f"{config.name}.{sub.name}",
                    "priority": sub.priority,
                    "mode": config.effective_mode,
                    "git_url": config.deployment.git_url,
                    "source": entry.source,
                }
            )
    return rows


def config(entry: Entry) -> dict[str, Any]:
    """A queue configuration in full, with where it came from."""
    return {**entry.config.to_json(), "source": entry.source}
