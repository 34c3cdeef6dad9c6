"""Queues of other plugins' own: work a plugin hands to its consumers in the runtime,
with the queues plugin's semantics (leases renewed while a task runs, a lost lease's task
leased again, retries with backoff, archiving once they run out) on whichever backend it
runs, so that several instances sharing the backend share the work.

Such a queue is not one of runqy's (no configuration file names it, and runqy's workers
never see it): `Queues.internal(name)` gives the handle, and the plugin's consumers lease
through it in process rather than over the worker protocol. Name it after the plugin
(`platform.pipeline`), so that it meets no runqy queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from .limits import check_json
from .service import QueueService
from .store import Duplicate, NewTask, Task


class InternalQueue:
    """One internal queue of one generation's queue service.

    :raises ValueError: (at construction) for a name that is not `<plugin>.<queue>`.
    """

    def __init__(self, service: QueueService, name: str) -> None:
        plugin, dot, rest = name.partition(".")
        if not (plugin and dot and rest) or not name.isprintable() or len(name) > 255:
            raise ValueError(f"{name!r}: an internal queue is named <plugin>.<queue>")
        self.service = service
        self.name = name

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts unless renewed (renew every third of it)."""
        return self.service.options.lease_seconds

    async def enqueue(
        self,
        payload: Any,
        *,
        type: str = "",
        max_retry: int | None = None,
        unique_key: str | None = None,
        unique_ttl: float = 86400.0,
    ) -> Task | None:
        """Add a task; None when `unique_key` is held by an unfinished task (nothing is
        added then).

        :raises ValueError: a payload that is not plain JSON.
        """
        check_json(payload)
        options = self.service.options
        task = NewTask(
            id=str(uuid.uuid4()),
            queue=self.name,
            type=type,
            payload=payload,
            timeout=0.0,
            max_retry=options.max_retry if max_retry is None else max_retry,
            unique_key=unique_key,
            unique_ttl=unique_ttl if unique_key else 0.0,
            retention=options.retention_seconds,
            archived_retention=options.archived_retention_seconds,
        )
        (outcome,) = await self.service.store.enqueue([task])
        if isinstance(outcome, Duplicate):
            return None
        self.service.notifier.ready(self.name)
        return outcome

    async def lease(self, worker_id: str, wait: float) -> Task | None:
        """Lease the next task to `worker_id`, waiting up to `wait` seconds for one (an
        enqueue on any instance sharing the backend wakes the wait)."""
        service = self.service
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        while True:
            with service.notifier.listen([self.name]) as ready:
                task = await service.store.dequeue([self.name], worker_id, self.lease_seconds)
                left = deadline - loop.time()
                if task is not None or left <= 0 or service.notifier.closed:
                    return task
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), min(left, service.options.poll_seconds))

    async def renew(self, task_id: str, worker_id: str) -> None:
        """Extend the lease. :raises ApiError: 404, 409 LEASE_LOST."""
        await self.service.renew(task_id, worker_id)

    async def complete(self, task_id: str, worker_id: str, result: Any = None) -> Task:
        """Record the task done. :raises ApiError: 404, 409 LEASE_LOST."""
        return await self.service.complete(task_id, worker_id, result)

    async def fail(self, task_id: str, worker_id: str, error: str, retry: bool = True) -> Task:
        """Record a failed run: retried after the backoff, or archived once the retries
        run out (the returned task's `state` says which). :raises ApiError: 404, 409."""
        return await self.service.fail(task_id, worker_id, error, retry)

    async def release(self, task_id: str, worker_id: str) -> Task:
        """Hand the task back unrun (its retries untouched). :raises ApiError: 404, 409."""
        return await self.service.release(task_id, worker_id)

    async def get(self, task_id: str) -> Task | None:
        """A task of this queue, or None."""
        task = await self.service.store.get(task_id)
        return task if task is not None and task.queue == self.name else None


__all__ = ["InternalQueue"]
