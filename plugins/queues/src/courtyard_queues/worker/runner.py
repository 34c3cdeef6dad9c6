"""The worker's main loop.

1. Register (`POST /worker/register`), retrying while the server cannot be reached.
2. Prepare the deployment and start the task process (`long_running`) while the
   heartbeat says `bootstrapping`; then `running`.
3. Up to `concurrency` tasks are held at once (leased, and not yet reported). Tasks are
   leased and reported through `POST /worker/batch`: the reports of every task that
   ended since the last request go in one request, which also leases as many tasks as
   there is room for, so that a busy worker sends one request per batch of tasks rather
   than one or two per task. When there is room and no report is on its way, a long poll
   (the same route, with `wait`) asks for tasks; an enqueue wakes it at once. Each task
   runs in a handler of its own: while it runs its lease is renewed every third of the
   lease; a renewal that says `cancel` stops the task, one that says `LEASE_LOST`
   abandons it (another worker has it now). A task that outlives its `timeout` is
   stopped and failed for retry. A server without `/worker/batch` is asked one request
   per report, and one task per lease (`/worker/dequeue`).
4. On SIGTERM or SIGINT: no more dequeues; tasks in flight get `--shutdown-timeout`
   seconds to finish and be reported; those still running then are stopped and handed
   back (`release`: pending again, their retry count unchanged). A second signal hands
   back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import (
    Backoff,
    LeaseLost,
    Report,
    ServerError,
    Settlement,
    Unreachable,
    WorkerClient,
)
from .deployment import Deployment, prepare, redact, startup_argv, task_environment
from .executor import Executor, LongRunningExecutor, OneShotExecutor
from .messages import LONG_RUNNING, Assignment, Outcome, ProtocolError, Registration
from .process import ProcessExited, TaskInterrupted, TaskProcess

log = logging.getLogger("courtyard.worker")


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it was set.

    `asyncio.timeout` rather than `asyncio.wait_for`: on Python 3.11, `wait_for` returns
    normally when it is cancelled just as the event is set, and a loop built on it then
    outlives the cancel that was meant to end it.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


REPORT_WINDOW = 300.0  # seconds a report (complete, fail, release) keeps being retried
REGISTER_WINDOW = 120.0  # seconds registration is retried while the server is unreachable
STOP_WAIT = 10.0  # seconds a stopped task's run has to end before it is abandoned
DEQUEUE_WAIT = 25.0  # seconds one long poll waits for a task (the protocol allows 30)
MAX_REPORTS = 1000  # reports in one request (the most POST /worker/batch takes)
MAX_LEASE = 1000  # tasks leased by one request (the most POST /worker/batch leases)
MAX_ERROR = 60000  # characters of an error sent to the server (the end of a traceback)


@dataclass
class Options:
    """How the worker runs (the command's options)."""

    queue: str
    workdir: Path
    concurrency: int = 1
    shutdown_timeout: float = 30.0
    installer: str = "auto"
    python: str | None = None


@dataclass
class Active:
    """A task this worker runs, and why it was stopped, if it was."""

    assignment: Assignment
    stopped_because: str | None = None  # cancelled, timed out, lease lost, handed back
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str) -> bool:
        """Record why the task is stopped; False if it was stopped already."""
        if self.stopped_because is not None:
            return False
        self.stopped_because = reason
        self.stopped.set()
        return True


@dataclass
class _Slot:
    """The room one leased task takes until it is settled."""

    freed: bool = False


@dataclass
class _Pending:
    """A report waiting to be sent, and the future its settlement goes to."""

    report: Report
    slot: _Slot
    settled: asyncio.Future[Settlement]


def _shortened(outcome: Outcome) -> Outcome:
    """A failure whose error fits the server's limit (its end: a traceback's last lines
    say most)."""
    error = outcome.error or ""
    if len(error) <= MAX_ERROR:
        return outcome
    return Outcome(error="..." + error[-MAX_ERROR:], retry=outcome.retry)


class WorkerFailed(Exception):
    """The worker cannot go on: its `code` and `message` are printed and it exits 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Worker:
    """One `courtyard worker` run."""

    def __init__(self, client: WorkerClient, options: Options) -> None:
        self.client = client
        self.options = options
        self.status = "starting"
        self.registration: Registration | None = None
        self.deployment: Deployment | None = None
        self.executor: Executor | None = None
        self.active: dict[str, Active] = {}
        self.completed = 0
        self.failed = 0
        self._stopping = asyncio.Event()
        self._hand_back = asyncio.Event()
        self._beat_now = asyncio.Event()
        # Tasks leased and not yet settled (reported, handed back or abandoned): at most
        # `concurrency`, counting those asked for by requests on their way (`_reserved`).
        self._held = 0
        self._reserved = 0
        self._jobs: set[asyncio.Task[None]] = set()  # one per task held: run and report
        self._outbox: list[_Pending] = []  # reports waiting for the next request
        self._outbox_ready = asyncio.Event()
        self._reporting = False  # a request with reports is on its way
        self._reports_closed = False
        self._poke = asyncio.Event()  # room may have changed, or the worker is stopping
        self._leaser: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None

    # -- signals -----------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful stop; a second call hands tasks in flight back at once."""
        if self._stopping.is_set():
            log.warning("second stop signal: handing tasks in flight back now")
            self._hand_back.set()
            return
        log.info(
            "stopping: no new tasks; %d in flight get %g s to finish",
            len(self.active),
            self.options.shutdown_timeout,
        )
        self._stopping.set()
        self._poke.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGUSR1, self.describe)

    def describe(self) -> None:
        """Log what the worker is doing: its status, tasks, and every coroutine's stack
        (`kill -USR1 <pid>`, to see why a worker seems stuck)."""
        lines = [f"status {self.status}; tasks in flight: {sorted(self.active) or 'none'}"]
        for job in asyncio.all_tasks():
            frames = job.get_stack()
            where = " <- ".join(
                f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
                for frame in reversed(frames)
            )
            lines.append(f"{job.get_name()}: {where or 'not started'}")
        log.warning("worker state:\n  %s", "\n  ".join(lines))

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> None:
        """Register, deploy, process tasks until stopped.

        :raises WorkerFailed: registration refused, deployment or first start failed.
        """
        self._install_signals()
        try:
            await self._until_stopped(self._register())
            if self._stopping.is_set():
                return
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            try:
                self._set_status("bootstrapping")
                await self._until_stopped(self._bootstrap())
                if self._stopping.is_set():
                    return
                self._set_status("running")
                self._reporter = asyncio.create_task(self._report_loop(), name="reports")
                self._leaser = asyncio.create_task(self._lease_loop(), name="leases")
                await self._stopping.wait()
                self._set_status("stopping")
                await self._drain()
            finally:
                self.status = "stopped"
                for loop_task in (heartbeat, self._leaser, self._reporter):
                    if loop_task is not None and not loop_task.done():
                        loop_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await loop_task
                if self.executor is not None:
                    await self.executor.close("worker stopping", 10.0)
                await self._final_heartbeat()
        finally:
            self.status = "stopped"
            log.info("worker stopped: %d completed, %d failed", self.completed, self.failed)

    async def _until_stopped(self, work: Any) -> None:
        """Run `work`, abandoning it if a stop signal comes first."""
        job = asyncio.ensure_future(work)
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            return
        job.result()

    async def _register(self) -> None:
        queue = self.options.queue
        worker_id, server = self.client.worker_id, self.client.server
        log.info("registering as %s for queue %s at %s", worker_id, queue, server)
        try:
            registration = await self.client.register(
                queue, self.options.concurrency, deadline=time.monotonic() + REGISTER_WINDOW
            )
        except ServerError as exc:
            status = f" (HTTP {exc.status})" if exc.status else ""
            raise WorkerFailed("REGISTER_FAILED", f"{exc}{status}") from None
        except ProtocolError as exc:
            raise WorkerFailed("BAD_REGISTRATION", str(exc)) from None
        self.registration = registration
        spec = registration.deployment
        log.info(
            "registered: queue %s, mode %s, %d vault value(s), lease %g s",
            registration.queue or queue,
            registration.mode,
            len(registration.vaults),
            registration.lease_seconds,
        )
        log.debug("deployment: %s at %s, %r", redact(spec.git_url), spec.branch, spec.startup_cmd)

    async def _bootstrap(self) -> None:
        from .deployment import DeploymentError
        from .process import StartupFailed

        assert self.registration is not None
        registration = self.registration
        spec = registration.deployment
        try:
            deployment = await prepare(
                spec,
                self.options.workdir,
                self.options.queue,
                installer=self.options.installer,
                python=self.options.python,
            )
            argv = startup_argv(spec.startup_cmd, deployment)
        except DeploymentError as exc:
            raise WorkerFailed("DEPLOYMENT_FAILED", str(exc)) from None
        self.deployment = deployment
        env = task_environment(deployment, registration.vaults)

        def factory(label: str) -> TaskProcess:
            return TaskProcess(argv, deployment.code, env, label=label)

        executor: Executor
        if registration.mode == LONG_RUNNING:
            executor = LongRunningExecutor(factory, spec.startup_timeout)
        else:
            executor = OneShotExecutor(factory, spec.startup_timeout)
        self.executor = executor
        try:
            await executor.start()
        except StartupFailed as exc:
            raise WorkerFailed("STARTUP_FAILED", f"{spec.startup_cmd!r}: {exc}") from None
        log.info("ready: %d slot(s) on queue %s", self.options.concurrency, self.options.queue)

    # -- leasing -----------------------------------------------------------------------

    def _room(self) -> int:
        """How many more tasks this worker may lease now: its concurrency, less the tasks
        it holds (running, or finished and not yet reported) and those asked for."""
        return self.options.concurrency - self._held - self._reserved

    def _adopt(self, assignments: list[Assignment]) -> None:
        """Start a handler for each task just leased (or hand it back while stopping)."""
        for assignment in assignments:
            slot = _Slot()
            self._held += 1
            if self._stopping.is_set():  # leased as the stop began: give it back untouched
                work = self._release(assignment)
            else:
                work = self._handle(assignment, slot)
            job = asyncio.create_task(work, name=f"task {assignment.task_id}")
            self._jobs.add(job)
            job.add_done_callback(lambda done, slot=slot: self._job_done(done, slot))

    def _job_done(self, job: asyncio.Task[None], slot: _Slot) -> None:
        self._jobs.discard(job)
        self._free(slot)
        if not job.cancelled() and (problem := job.exception()) is not None:
            # A bug must not stop the worker: the lease brings the task back.
            log.error("%s could not be handled", job.get_name(), exc_info=problem)

    def _free(self, slot: _Slot) -> None:
        """The slot's task is settled (reported, handed back or abandoned): room for one."""
        if not slot.freed:
            slot.freed = True
            self._held -= 1
            self._poke.set()

    async def _lease_loop(self) -> None:
        """Lease tasks while there is room and no report is on its way (reports lease
        with them, in the same request): a long poll, so an idle worker waits on the
        server and an enqueue wakes it at once."""
        assert self.executor is not None
        backoff = Backoff(first=0.5, cap=15.0)
        while not self._stopping.is_set():
            if not self.executor.is_ready():
                await self._until_stopped(self.executor.wait_ready())
                continue
            room = min(self._room(), MAX_LEASE)
            if room <= 0 or self._outbox or self._reporting:
                self._poke.clear()
                await self._poke.wait()  # set by stop() too
                continue
            self._reserved += room
            try:
                leased = await self._poll(room)
            except (ServerError, ProtocolError) as exc:
                delay = backoff.next()
                log.error("dequeue failed: %s; trying again in %.1f s", exc, delay)
                await self._sleep_unless_stopping(delay)
                continue
            finally:
                self._reserved -= room
            backoff.reset()
            self._adopt(leased)

    async def _poll(self, room: int) -> list[Assignment]:
        """Long-poll for up to `room` tasks; none at once when the worker begins to stop.

        A poll cut short is cancelled on the server too (it sees the connection close);
        should the server have leased tasks at that very moment, they come back when
        their lease expires.
        """
        request = asyncio.create_task(
            self.client.exchange(self.options.queue, [], room, DEQUEUE_WAIT, deadline=None)
        )
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({request, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not request.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await request
        return [] if request.cancelled() else request.result().tasks

    async def _sleep_unless_stopping(self, delay: float) -> None:
        await _wait(self._stopping, delay)

    # -- reporting ---------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Send the reports of finished tasks: all those waiting, in one request, which
        also leases as many tasks as they leave room for (none while stopping)."""
        assert self.executor is not None
        while True:
            if not self._outbox:
                if self._reports_closed:
                    return
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            batch = self._outbox[:MAX_REPORTS]
            del self._outbox[:MAX_REPORTS]
            room = 0
            if not self._stopping.is_set() and self.executor.is_ready():
                room = min(max(0, self._room() + len(batch)), MAX_LEASE)  # reported: room
            self._reserved += room
            self._reporting = True
            try:
                answer = await self.client.exchange(
                    self.options.queue,
                    [pending.report for pending in batch],
                    room,
                    0.0,
                    deadline=time.monotonic() + REPORT_WINDOW,
                )
            except Exception as exc:  # Unreachable, refused, unreadable: each handler says
                for pending in batch:
                    self._free(pending.slot)
                    if not pending.settled.done():
                        pending.settled.set_exception(exc)
                continue
            finally:
                self._reserved -= room
                self._reporting = False
                self._poke.set()
            log.debug("reported %d task(s), leased %d", len(batch), len(answer.tasks))
            for pending, settlement in zip(batch, answer.settlements, strict=True):
                self._free(pending.slot)
                if not pending.settled.done():
                    pending.settled.set_result(settlement)
            self._adopt(answer.tasks)

    async def _send(self, slot: _Slot, report: Report) -> Settlement:
        """Queue a report for the next request and wait for its settlement."""
        pending = _Pending(report, slot, asyncio.get_running_loop().create_future())
        self._outbox.append(pending)
        self._outbox_ready.set()
        return await pending.settled

    # -- tasks -------------------------------------------------------------------------

    async def _handle(self, assignment: Assignment, slot: _Slot) -> None:
        """Run a task and report its outcome."""
        assert self.executor is not None
        task_id = assignment.task_id
        active = Active(assignment)
        self.active[task_id] = active
        log.debug("task %s (%s) started", task_id, assignment.queue)
        runner = asyncio.create_task(self.executor.run(assignment))
        renewer = asyncio.create_task(self._renew_loop(active))
        stopped = asyncio.create_task(active.stopped.wait())
        try:
            await asyncio.wait(
                {runner, stopped},
                timeout=assignment.timeout or None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not runner.done():
                await self._stop_task(active, "timed out")
                await asyncio.wait({runner}, timeout=STOP_WAIT)
                if not runner.done():  # not in a process (yet): stop waiting for it
                    runner.cancel()
                    await asyncio.wait({runner})
            outcome = await self._outcome(active, runner)
        finally:
            for helper in (renewer, stopped):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            self.active.pop(task_id, None)
        if outcome is not None:
            await self._deliver(assignment, outcome, slot)

    async def _outcome(self, active: Active, runner: asyncio.Task[Outcome]) -> Outcome | None:
        """What to report for a task whose run ended: None when there is nothing to say
        (lease lost) or it was handed back."""
        assignment = active.assignment
        try:
            if runner.cancelled():
                raise TaskInterrupted(active.stopped_because or "stopped")
            return await runner
        except TaskInterrupted as exc:
            reason = active.stopped_because
            if reason == "timed out":
                limit = f"{assignment.timeout:g}"
                return Outcome(error=f"task timed out after {limit} s", retry=True)
            if reason == "cancelled":
                return Outcome(error="cancelled", retry=False)
            if reason == "lease lost":
                log.warning("task %s abandoned: its lease was lost", assignment.task_id)
                return None
            # Handed back at shutdown, or stopped with another task's process: not its fault.
            log.info("task %s handed back (%s)", assignment.task_id, reason or exc)
            await self._release(assignment)
            return None
        except ProcessExited as exc:
            return Outcome(error=str(exc), retry=True)

    async def _stop_task(self, active: Active, reason: str) -> None:
        assert self.executor is not None
        if active.stop(reason):
            await self.executor.abort(active.assignment.task_id, reason)

    async def _renew_loop(self, active: Active) -> None:
        assert self.registration is not None
        every = max(0.2, self.registration.lease_seconds / 3)
        task_id = active.assignment.task_id
        while True:
            await asyncio.sleep(every)
            try:
                cancel = await self.client.renew(task_id, deadline=time.monotonic() + every)
            except LeaseLost:
                await self._stop_task(active, "lease lost")
                return
            except (ServerError, ProtocolError) as exc:
                log.warning("renewing the lease of task %s failed: %s", task_id, exc)
                continue
            if cancel:
                log.info("task %s cancelled by the server", task_id)
                await self._stop_task(active, "cancelled")
                return

    async def _deliver(self, assignment: Assignment, outcome: Outcome, slot: _Slot) -> None:
        """Report a task's outcome (with the next reports, in one request), retrying for a
        while, and log what the server made of it."""
        task_id = assignment.task_id
        kind = "completion" if outcome.ok else "failure"
        if not outcome.ok:
            outcome = _shortened(outcome)
        try:
            settlement = await self._send(slot, Report(task_id, outcome))
            if not settlement.recorded and outcome.ok and settlement.status == 400:
                # The server cannot store this result (NaN, nested too deeply, ...); a rerun
                # would give the same: the task fails for good, saying why, rather than
                # coming back each time its lease expires.
                refusal = f"{settlement.code}: {settlement.message}"
                outcome = Outcome(error=f"the server refused the result: {refusal}", retry=False)
                kind = "refused result"
                slot = _Slot()  # the task is still this worker's until the failure is in
                self._held += 1
                settlement = await self._send(slot, Report(task_id, outcome))
        except Unreachable as exc:
            log.error("task %s: the %s could not be sent: %s", task_id, kind, exc)
            return
        except (ServerError, ProtocolError) as exc:
            log.error("task %s: the server refused the %s: %s", task_id, kind, exc)
            return
        if settlement.recorded and outcome.ok:
            self.completed += 1
            log.info("task %s completed", task_id)
        elif settlement.recorded:
            self.failed += 1
            assert outcome.error is not None
            first_line = outcome.error.strip().splitlines()[-1:] or [""]
            log.warning("task %s failed (%s): %s", task_id, settlement.state, first_line[0])
        elif settlement.code == "LEASE_LOST":
            log.warning("task %s: its lease was lost before the %s was recorded", task_id, kind)
        else:
            log.error(
                "task %s: the server refused the %s: %s: %s",
                task_id,
                kind,
                settlement.code,
                settlement.message,
            )

    async def _release(self, assignment: Assignment) -> None:
        """Hand a task back unrun (pending again, its retry count unchanged)."""
        task_id = assignment.task_id
        try:
            await self.client.release(task_id, deadline=time.monotonic() + REPORT_WINDOW)
        except LeaseLost:
            log.warning("task %s: its lease was lost before the release was recorded", task_id)
        except Unreachable as exc:
            log.error("task %s: the release could not be sent: %s", task_id, exc)
        except ServerError as exc:
            log.error("task %s: the server refused the release: %s", task_id, exc)

    # -- stopping ----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Let tasks in flight finish within the shutdown timeout, then hand back the rest;
        then send the last reports."""
        end = time.monotonic() + self.options.shutdown_timeout
        if self._leaser is not None:
            await asyncio.wait({self._leaser})  # it ends at once: its poll is abandoned
            if not self._leaser.cancelled() and self._leaser.exception() is not None:
                log.error("the lease loop failed", exc_info=self._leaser.exception())
        hand_back = asyncio.create_task(self._hand_back.wait())
        try:
            while not self._hand_back.is_set():
                remaining = end - time.monotonic()
                if not self._jobs or remaining <= 0:
                    break
                await asyncio.wait(
                    set(self._jobs) | {hand_back},
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hand_back.cancel()
        if self._jobs:
            if self.active:
                log.warning("handing back %d task(s) still running", len(self.active))
            for active in list(self.active.values()):
                active.stop("handed back")
            assert self.executor is not None
            await self.executor.close("handed back at shutdown", 0.0, kill=True)
            # The handlers report the releases (retried for a while if the server is away).
            if self._jobs:
                _, late = await asyncio.wait(set(self._jobs), timeout=REPORT_WINDOW)
                for job in late:
                    job.cancel()
                if late:
                    await asyncio.wait(late, timeout=5)
        self._reports_closed = True
        self._outbox_ready.set()
        if self._reporter is not None:
            await asyncio.wait({self._reporter}, timeout=REPORT_WINDOW)
        if self._jobs:  # tasks its last answer brought, being handed back
            await asyncio.wait(set(self._jobs), timeout=REPORT_WINDOW)

    # -- heartbeat ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        assert self.registration is not None
        every = self.registration.heartbeat_seconds
        failing = False
        while self.status != "stopped":
            # Cleared before the beat: a status that changes while it is on its way is
            # sent at once by the next one.
            self._beat_now.clear()
            try:
                await self.client.heartbeat(
                    self.options.queue,
                    self.status,
                    sorted(self.active),
                    self.options.concurrency,
                    deadline=time.monotonic() + every,
                )
                if failing:
                    log.info("heartbeat: the server answers again")
                failing = False
            except ServerError as exc:
                if not failing:
                    log.warning("heartbeat failed: %s", exc)
                failing = True
            await _wait(self._beat_now, every)

    def _set_status(self, status: str) -> None:
        """Change the status the heartbeat reports, and report it at once."""
        self.status = status
        self._beat_now.set()

    async def _final_heartbeat(self) -> None:
        if self.registration is None:
            return
        with contextlib.suppress(ServerError):
            await self.client.heartbeat(
                self.options.queue,
                "stopped",
                [],
                self.options.concurrency,
                deadline=time.monotonic() + 5,
            )
