"""Runners and their jobs on the runtime's database: what every route does.

One `Service` per generation. Every change goes through the database, so several
instances sharing it (PostgreSQL) serve the same runners: a job is claimed by a
conditional UPDATE (only one agent poll can move it from `queued` to `running`), and
wake-ups for other instances travel on the event bus. The sweeper (`sweep`) turns runners
whose heartbeats stopped `inactive` and retries or fails their running jobs, so no job is
ever left `running` by an agent that died.

The service is one object in four parts, each a module: runners as records
(records.py), jobs and their logs (jobs.py), the agent protocol (sessions.py) and the
sweeper (recovery.py); what they share is in states.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .formats import iso
from .jobs import JobRecords
from .notify import Notifier
from .records import RunnerRecords
from .recovery import Recovery
from .sessions import AgentSessions
from .states import Options, Publisher


class Service(RunnerRecords, JobRecords, AgentSessions, Recovery):
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
