"""How tasks, queues and workers look in answers, shaped like runqy's own.

runqy's answers carry payloads and results as JSON text (`"payload": "{\\"a\\":1}"`),
which its Python client decodes; the same goes here. Times are RFC 3339 in UTC
(`2024-01-15T10:30:00Z`); absent ones are null.

Reading is defensive: a stored value no answer can show (a time past year 9999, a
non-finite number, written before inputs were bounded) shows as null instead of failing
every listing that includes it. Secrets in queue configurations (`git_token`, any
secret-shaped key, credentials in a URL) are masked as the vaults plugin masks values.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import QueueConfig, format_duration, split_name
from .registry import Entry
from .store import QueueStats, Task, Worker

MASK = "****"
# Keys whose values are secrets, wherever they are in a configuration (after lower-casing
# and turning '-' into '_'): git_token, password, client_secret, api_key, ssh_key, ...
# but not max_tokens or tokenizer, common names of task inputs.
SECRET_KEY_RE = re.compile(r"(^|_)(token|auth)$|passw(or)?d|secret|credential|(^|_)key$|apikey")


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as `2024-01-15T10:30:00Z` (None for a value no date can show)."""
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def number(value: float | None) -> float | None:
    """`value` if it is a finite number, else None (JSON has no `Infinity`)."""
    if value is None or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


def mask(value: str) -> str:
    """A secret as the vaults plugin shows one: its first two characters, `****` and its
    last two; four characters or fewer are all hidden (`ghp_abcdef12` -> `gh****12`)."""
    if len(value) <= 4:
        return MASK
    return value[:2] + MASK + value[-2:]


def is_secret_key(key: str) -> bool:
    """Whether a configuration key names a secret (`git_token`, `password`, `api-key`)."""
    return bool(SECRET_KEY_RE.search(key.lower().replace("-", "_")))


def mask_url(text: str) -> str:
    """`text` with the credentials of a URL masked
    (`https://user:tok@host/r.git` -> `https://us****ok@host/r.git`); other text as is."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return mask(text)  # not a URL we can take apart: it may still hold a secret
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return text
    return urlunsplit(parts._replace(netloc=f"{mask(userinfo)}@{host}"))


def _masked_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value) if value else value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return mask(str(value))
    return MASK  # a mapping or a list under a secret key: hidden whole


def masked(document: Any) -> Any:
    """A copy of a configuration document with every secret masked: the values of
    secret-shaped keys, credentials in URLs, and the `default` of an input or output field
    whose `name` is secret-shaped."""
    if isinstance(document, dict):
        secret_field = isinstance(document.get("name"), str) and is_secret_key(document["name"])
        out: dict[str, Any] = {}
        for key, value in document.items():
            secret = isinstance(key, str) and is_secret_key(key)
            if secret or (key == "default" and secret_field):
                out[key] = _masked_value(value)
            else:
                out[key] = masked(value)
        return out
    if isinstance(document, list | tuple):
        return [masked(item) for item in document]
    if isinstance(document, str):
        return mask_url(document)
    return document


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def info(task: Task, *, with_result: bool = True) -> dict[str, Any]:
    """The `info` object of `/queue/add` and `GET /queue/{task_id}` (runqy's API names `id`,
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
        "timeout": number(task.timeout),
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
        "timeout": number(task.timeout),
        "lease_expires_at": number(task.lease_expires_at),
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
                    "git_url": mask_url(config.deployment.git_url),
                    "source": entry.source,
                }
            )
    return rows


def config(entry: Entry) -> dict[str, Any]:
    """A queue configuration in full, secrets masked, with where it came from."""
    return {**config_json(entry.config), "source": entry.source}


def config_json(queue_config: QueueConfig) -> dict[str, Any]:
    """A queue configuration as the configs API shows it: secrets masked, for everyone."""
    shown: dict[str, Any] = masked(queue_config.to_json())
    return shown
