"""Running tasks in task processes: the two deployment modes.

- `LongRunningExecutor` (`long_running`): one process for every task, started once and
  kept; tasks are written to it as they come (a runqy runner answers them in order). A
  process that exits by itself is a crash: its tasks in flight fail with `ProcessExited`
  (the worker reports them for retry) and it is restarted after a backoff that doubles
  with each crash in a row. Stopping one task (timeout, cancel) means killing the
  process: the other tasks in flight get `TaskInterrupted`, and the process is restarted
  at once.
- `OneShotExecutor` (`one_shot`): one process per task, which exits after answering.
  A process that crashes or does not start delays the next tasks by the same backoff.

`wait_ready()` returns when a task could run now; the worker dequeues only then, so that
no task is leased while its process is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .messages import Assignment, Outcome
from .process import ProcessExited, StartupFailed, TaskInterrupted, TaskProcess

log = logging.getLogger("courtyard.worker")

ProcessFactory = Callable[[str], TaskProcess]  # label -> a process not started yet
EXIT_GRACE = 5.0  # seconds a one-shot process has to exit after answering


class CrashBackoff:
    """Delays before restarting after crashes in a row: `first`, doubling to `cap`."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first = first
        self.cap = cap
        self.crashes = 0

    def next(self) -> float:
        """Count a crash and return how long to wait before the next start."""
        delay = min(self.cap, self.first * (2**self.crashes))
        self.crashes += 1
        return delay

    def reset(self) -> None:
        """A process ran well: the next crash waits `first` again."""
        self.crashes = 0


class Executor(Protocol):
    """What the worker needs of a deployment mode."""

    starts: int

    async def start(self) -> None:
        """Prepare to run tasks; :raises StartupFailed: the first process did not start."""

    async def wait_ready(self) -> None:
        """Return when a task could be run now."""

    def is_ready(self) -> bool:
        """Whether a task could be run now (what `wait_ready` waits for)."""

    async def run(self, assignment: Assignment) -> Outcome:
        """Run one task and return the process's answer.

        :raises ProcessExited: the process crashed (or could not start) first.
        :raises TaskInterrupted: the worker stopped the process first.
        """

    async def abort(self, task_id: str, reason: str) -> None:
        """Stop a task that runs (its `run` raises `TaskInterrupted(reason)`)."""

    async def close(self, reason: str, grace: float, *, kill: bool = False) -> None:
        """Stop every process: `grace` seconds to exit after end-of-file, then signals;
        with `kill`, SIGKILL at once. No process starts after this."""


class LongRunningExecutor:
    """One supervised process that runs every task."""

    def __init__(
        self,
        factory: ProcessFactory,
        startup_timeout: float,
        *,
        backoff: CrashBackoff | None = None,
        stable_after: float = 30.0,
    ) -> None:
        self._factory = factory
        self._startup_timeout = startup_timeout
        self._backoff = backoff or CrashBackoff()
        self._stable_after = stable_after  # seconds up after which a crash is "the first"
        self._process: TaskProcess | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self.starts = 0

    async def _spawn(self) -> TaskProcess:
        self.starts += 1
        process = self._factory(f"task process #{self.starts}")
        await process.start(self._startup_timeout)
        return process

    def _adopt(self, process: TaskProcess) -> None:
        self._process = process
        self._ready.set()

    async def start(self) -> None:
        """Start the process; a failure here is reported, not retried."""
        process = await self._spawn()
        self._adopt(process)
        self._supervisor = asyncio.create_task(self._supervise(process))

    async def _supervise(self, process: TaskProcess) -> None:
        while True:
            await process.wait_exited()
            self._ready.clear()
            self._process = None
            if self._closing:
                return
            if not process.stopped_by_worker:
                if time.monotonic() - process.started_at >= self._stable_after:
                    self._backoff.reset()
                delay = self._backoff.next()
                log.warning("the task process crashed; restarting it in %.1f s", delay)
                await asyncio.sleep(delay)
            while not self._closing:
                try:
                    process = await self._spawn()
                    break
                except Exception as exc:  # StartupFailed, or anything else: never give up
                    delay = self._backoff.next()
                    log.error("the task process did not start: %s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
            if self._closing:
                if process.alive:
                    await process.kill("worker stopping")
                return
            log.info("the task process is back (start #%d)", self.starts)
            self._adopt(process)

    async def wait_ready(self) -> None:
        """Return once the process is up."""
        while True:
            await self._ready.wait()
            process = self._process
            if process is not None and process.alive:
                return
            await asyncio.sleep(0.05)  # it just exited: the supervisor is about to notice

    def is_ready(self) -> bool:
        """Whether the process is up."""
        process = self._process
        return self._ready.is_set() and process is not None and process.alive

    async def run(self, assignment: Assignment) -> Outcome:
        """Send the task to the process and wait for its answer."""
        process = self._process
        if process is None or not process.alive:  # the task never reached a process
            raise TaskInterrupted("the task process is restarting")
        future = await process.submit(assignment)
        try:
            outcome = await future
        except asyncio.CancelledError:
            process.forget(assignment.task_id)
            raise
        if time.monotonic() - process.started_at >= self._stable_after:
            self._backoff.reset()
        return outcome

    async def abort(self, task_id: str, reason: str) -> None:
        """Kill the process if the task is in flight in it; the supervisor restarts it."""
        process = self._process
        if process is not None and task_id in process.in_flight:
            log.warning("stopping the task process: task %s %s", task_id, reason)
            await process.kill(reason)

    async def close(self, reason: str, grace: float, *, kill: bool = False) -> None:
        """Stop the process and its supervision."""
        self._closing = True
        process = self._process
        if process is not None:
            await (process.kill(reason) if kill else process.stop(reason, grace))
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor


class OneShotExecutor:
    """A new process for each task."""

    def __init__(
        self,
        factory: ProcessFactory,
        startup_timeout: float,
        *,
        backoff: CrashBackoff | None = None,
        exit_grace: float = EXIT_GRACE,
    ) -> None:
        self._factory = factory
        self._startup_timeout = startup_timeout
        self._backoff = backoff or CrashBackoff()
        self._exit_grace = exit_grace
        self._running: dict[str, TaskProcess] = {}
        self._not_before = 0.0  # monotonic time before which no new task starts
        self._closing = False
        self.starts = 0

    async def start(self) -> None:
        """Nothing to start: processes start with their tasks."""

    def _crashed(self) -> None:
        delay = self._backoff.next()
        self._not_before = max(self._not_before, time.monotonic() + delay)
        log.warning("the task process failed; next task in %.1f s at the earliest", delay)

    async def wait_ready(self) -> None:
        """Wait out the backoff after a crash."""
        delay = self._not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def is_ready(self) -> bool:
        """Whether the backoff after a crash is over."""
        return time.monotonic() >= self._not_before

    async def run(self, assignment: Assignment) -> Outcome:
        """Start a process, give it the task, close its stdin and read its answer."""
        if self._closing:
            raise ProcessExited("the worker is stopping")
        self.starts += 1
        process = self._factory(f"task {assignment.task_id}")
        self._running[assignment.task_id] = process
        try:
            try:
                await process.start(self._startup_timeout)
            except StartupFailed as exc:
                self._crashed()
                raise ProcessExited(f"the task process did not start: {exc}") from None
            try:
                future = await process.submit(assignment)
                await process.close_stdin()
                outcome = await future
            except ProcessExited:
                self._crashed()
                raise
            await process.stop("answered", self._exit_grace)
            self._backoff.reset()
            return outcome
        finally:
            self._running.pop(assignment.task_id, None)
            process.forget(assignment.task_id)
            if process.alive:  # cancelled or failed on the way: leave nothing running
                await asyncio.shield(process.kill("abandoned"))

    async def abort(self, task_id: str, reason: str) -> None:
        """Kill the task's process."""
        process = self._running.get(task_id)
        if process is not None:
            log.warning("stopping the process of task %s: %s", task_id, reason)
            await process.kill(reason)

    async def close(self, reason: str, grace: float, *, kill: bool = False) -> None:
        """Stop the processes of the tasks still running."""
        self._closing = True
        await asyncio.gather(
            *(
                process.kill(reason) if kill else process.stop(reason, grace)
                for process in list(self._running.values())
            )
        )
