"""The worker's main loop.

1. Register (`POST /worker/register`), retrying while the server cannot be reached.
2. Prepare the deployment and start the task process (`long_running`) while the
   heartbeat says `bootstrapping`; then `running`.
3. `concurrency` slots each long-poll `POST /worker/dequeue` for a task, run it, and
   report it (`complete`, or `fail` with `retry`). A completion also asks for the next
   task (`next_queue`), so that a busy queue costs one request per task; the slot goes
   back to the long poll when none was ready. While a task runs its lease is renewed
   every third of the lease; a renewal that says `cancel` stops the task, one that says
   `LEASE_LOST` abandons it (another worker has it now). A task that outlives its
   `timeout` is stopped and failed for retry.
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

from .client import Backoff, LeaseLost, ServerError, Unreachable, WorkerClient
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
        self._slots: list[asyncio.Task[None]] = []

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
                self._slots = [
                    asyncio.create_task(self._slot(n)) for n in range(self.options.concurrency)
                ]
                await self._stopping.wait()
                self._set_status("stopping")
                await self._drain()
            finally:
                self.status = "stopped"
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
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

    # -- slots -------------------------------------------------------------------------

    async def _slot(self, number: int) -> None:
        """Dequeue, run and report tasks, one at a time, until the worker stops."""
        assert self.executor is not None and self.registration is not None
        backoff = Backoff(first=0.5, cap=15.0)
        assignment: Assignment | None = None  # leased with the last completion
        while not self._stopping.is_set():
            if assignment is None:
                await self._until_stopped(self.executor.wait_ready())
                if self._stopping.is_set():
                    break
                try:
                    assignment = await self._dequeue()
                except (ServerError, ProtocolError) as exc:
                    delay = backoff.next()
                    log.error("dequeue failed: %s; trying again in %.1f s", exc, delay)
                    await self._sleep_unless_stopping(delay)
                    continue
                backoff.reset()
                if assignment is None:
                    continue
                if self._stopping.is_set():
                    break
            current, assignment = assignment, None
            try:
                assignment = await self._handle(current)
            except Exception:  # a bug must not end the slot: the lease brings the task back
                log.exception("slot %d: task %s could not be handled", number, current.task_id)
        if assignment is not None:  # leased while the stop began: give it back untouched
            await self._report(assignment, "release")

    async def _dequeue(self) -> Assignment | None:
        """Long-poll for a task; None at once when the worker begins to stop.

        A poll cut short is cancelled on the server too (it sees the connection close);
        should the server have leased a task at that very moment, the task comes back
        when its lease expires.
        """
        request = asyncio.create_task(
            self.client.dequeue(self.options.queue, DEQUEUE_WAIT, deadline=None)
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
        return None if request.cancelled() else request.result()

    async def _sleep_unless_stopping(self, delay: float) -> None:
        await _wait(self._stopping, delay)

    async def _handle(self, assignment: Assignment) -> Assignment | None:
        """Run a task and report it; the next task when its completion brought one."""
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
        if outcome is None:
            return None
        return await self._report(assignment, "outcome", outcome)

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
            await self._report(assignment, "release")
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

    async def _report(
        self, assignment: Assignment, kind: str, outcome: Outcome | None = None
    ) -> Assignment | None:
        """Send a task's outcome (or its release) to the server, retrying for a while.

        :return: the next task, leased with a completion (asked for unless stopping).
        """
        task_id = assignment.task_id
        deadline = time.monotonic() + REPORT_WINDOW
        try:
            if kind == "release":
                await self.client.release(task_id, deadline=deadline)
            elif outcome is not None and outcome.ok:
                following = None if self._stopping.is_set() else self.options.queue
                try:
                    leased = await self.client.complete(
                        task_id, outcome.result, deadline=deadline, next_queue=following
                    )
                except ServerError as exc:
                    if exc.status != 400 or isinstance(exc, Unreachable):
                        raise
                    # The server cannot store this result (NaN, nested too deeply, ...); a
                    # rerun would give the same: the task fails for good, saying why, rather
                    # than coming back each time its lease expires.
                    outcome = Outcome(error=f"the server refused the result: {exc}", retry=False)
                    kind = "refused result"
                else:
                    self.completed += 1
                    log.info("task %s completed", task_id)
                    return leased
            if outcome is not None and not outcome.ok and kind != "release":
                assert outcome.error is not None
                error = outcome.error
                if len(error) > MAX_ERROR:  # keep the end: a traceback's last lines say most
                    error = "..." + error[-MAX_ERROR:]
                state = await self.client.fail(task_id, error, outcome.retry, deadline=deadline)
                self.failed += 1
                first_line = outcome.error.strip().splitlines()[-1:] or [""]
                log.warning("task %s failed (%s): %s", task_id, state or "?", first_line[0])
        except LeaseLost:
            log.warning("task %s: its lease was lost before the %s was recorded", task_id, kind)
        except Unreachable as exc:
            log.error("task %s: the %s could not be sent: %s", task_id, kind, exc)
        except ServerError as exc:
            log.error("task %s: the server refused the %s: %s", task_id, kind, exc)
        except ProtocolError as exc:  # recorded, but the next task came malformed
            self.completed += 1
            log.error("task %s completed; the next task it brought is unreadable: %s", task_id, exc)
        return None

    # -- stopping ----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Let tasks in flight finish within the shutdown timeout, then hand back the rest."""
        assert self.registration is not None
        slots = set(self._slots)
        end = time.monotonic() + self.options.shutdown_timeout
        hand_back = asyncio.create_task(self._hand_back.wait())
        try:
            while not self._hand_back.is_set():
                running = {slot for slot in slots if not slot.done()}
                remaining = end - time.monotonic()
                if not running or remaining <= 0:
                    break
                await asyncio.wait(
                    running | {hand_back}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hand_back.cancel()
        if any(not slot.done() for slot in slots):
            if self.active:
                log.warning("handing back %d task(s) still running", len(self.active))
            for active in list(self.active.values()):
                active.stop("handed back")
            assert self.executor is not None
            await self.executor.close("handed back at shutdown", 0.0, kill=True)
            # The slots report the releases (retried for a while if the server is away).
            running = {slot for slot in slots if not slot.done()}
            if running:
                _, late = await asyncio.wait(running, timeout=REPORT_WINDOW)
                for slot in late:
                    slot.cancel()
                if late:
                    await asyncio.wait(late, timeout=5)
        for slot in slots:
            if slot.done() and not slot.cancelled() and slot.exception() is not None:
                log.error("a slot failed", exc_info=slot.exception())

    # -- heartbeat ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        assert self.registration is not None
        every = self.registration.heartbeat_seconds
        failing = False
        while self.status != "stopped":
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
            self._beat_now.clear()
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
