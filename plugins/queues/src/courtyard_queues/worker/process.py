"""One task process and runqy's stdio protocol with it.

The worker starts the deployment's `startup_cmd` with pipes on stdin, stdout and stderr:

- the process loads what it needs, then writes `{"status": "ready"}` on stdout (or
  `{"status": "error", "error": "..."}` if it cannot start);
- the worker writes one JSON line per task on stdin:
  `{"task_id", "type", "payload", "retry_count", "max_retry", "queue"}`;
- the process answers one JSON line per task on stdout:
  `{"task_id", "result", "error", "retry"}` (an error with `retry: false` is final).

stdout carries the protocol only; any other line on it (not JSON, not an object, an
answer for a task it was not given) is logged and skipped, as runqy's worker does. stderr
goes to the worker's log line by line. The process runs in a session of its own, so that
stopping it stops whatever it started too, and on Linux it is killed if the worker dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .messages import Assignment, Outcome

log = logging.getLogger("courtyard.worker.process")

MAX_LINE = 16 * 1024 * 1024  # longest stdout line (an answer with its result) accepted
TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when stopping a process
TOO_LONG = object()  # what read_lines yields for a line over the limit (dropped)


class StartupFailed(Exception):
    """The process exited, reported an error or stayed silent before it was ready."""


class ProcessExited(Exception):
    """The process exited by itself while tasks were in flight (a crash)."""


class TaskInterrupted(Exception):
    """The worker stopped the process a task was running in (its reason is the message)."""


async def read_lines(stream: asyncio.StreamReader, limit: int) -> AsyncIterator[bytes | object]:
    """Yield each line of `stream` without its newline, and `TOO_LONG` in place of a line
    longer than `limit` bytes (which is dropped as it arrives, never held whole)."""
    skipping = False
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # end of stream
            if exc.partial and not skipping:
                yield exc.partial
            elif skipping:
                yield TOO_LONG
            return
        except asyncio.LimitOverrunError as exc:
            await stream.readexactly(exc.consumed)  # drop the buffered part of the long line
            skipping = True
            continue
        if skipping:
            skipping = False
            yield TOO_LONG
            continue
        yield line.rstrip(b"\r\n")


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec function that has the child killed when the worker dies
    (`PR_SET_PDEATHSIG`), so that a SIGKILLed worker leaves no task process behind."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return set_pdeathsig


_PREEXEC = _die_with_parent()


class TaskProcess:
    """A started `startup_cmd`: send tasks with `submit`, stop it with `stop` or `kill`."""

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        *,
        label: str = "task",
        max_line: int = MAX_LINE,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.label = label
        self.max_line = max_line
        self.pid: int | None = None
        self.returncode: int | None = None
        self.started_at = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._write_lock = asyncio.Lock()
        self._stopping: str | None = None  # why the worker stops it (None: it may crash)
        self._exited = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self.ready = False

    # -- state -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True from the start until the process has exited."""
        return self._proc is not None and not self._exited.is_set()

    @property
    def stopped_by_worker(self) -> bool:
        """True when the worker stopped the process (not a crash)."""
        return self._stopping is not None

    @property
    def in_flight(self) -> list[str]:
        """The ids of the tasks sent and not answered yet."""
        return list(self._pending)

    async def wait_exited(self) -> int:
        """Wait until the process has exited and its output is read; its exit status."""
        await self._exited.wait()
        return self.returncode if self.returncode is not None else -1

    # -- starting ----------------------------------------------------------------------

    async def start(self, ready_timeout: float) -> None:
        """Start the process and wait for its ready signal.

        :raises StartupFailed: it could not be started, exited or reported an error, or
            was not ready within `ready_timeout` seconds (it is killed then).
        """
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=self.max_line,
                start_new_session=True,
                preexec_fn=_PREEXEC,
            )
        except OSError as exc:
            raise StartupFailed(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None
        self.pid = self._proc.pid
        self.started_at = time.monotonic()
        log.info("%s: started pid %s: %s", self.label, self.pid, " ".join(self.argv))
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]
        self._watcher = asyncio.create_task(self._watch(self._proc))
        try:
            async with asyncio.timeout(ready_timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            await self.kill("not ready in time")
            raise StartupFailed(
                f"no ready signal within {ready_timeout:g} s (startup_timeout_secs)"
            ) from None
        except StartupFailed:
            await self.kill("failed to start")
            raise
        except asyncio.CancelledError:  # the worker is stopping: leave nothing running
            self._stopping = self._stopping or "cancelled during startup"
            self._signal(signal.SIGKILL)
            raise

    # -- tasks -------------------------------------------------------------------------

    async def submit(self, assignment: Assignment) -> asyncio.Future[Outcome]:
        """Send one task; the future gets the process's answer.

        The future fails with `ProcessExited` if the process exits before answering, and
        with `TaskInterrupted` if the worker stops the process first.
        """
        if not self.alive or not self.ready:
            if self._stopping is not None:
                raise TaskInterrupted(self._stopping)
            raise ProcessExited(f"{self.label}: the task process is not running")
        if assignment.task_id in self._pending:
            raise ValueError(f"task {assignment.task_id} is already in flight")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending[assignment.task_id] = future  # before any await: _on_exit sees it
        line = assignment.request_line()
        stdin = self._proc.stdin if self._proc is not None else None
        try:
            async with self._write_lock:
                if stdin is None or stdin.is_closing():
                    raise ConnectionError("stdin is closed")
                stdin.write(line)
                await stdin.drain()
        except BaseException as exc:  # a broken pipe, or the caller cancelled
            self.forget(assignment.task_id)
            if not isinstance(exc, ConnectionError | RuntimeError):
                raise
            if self._stopping is not None:
                raise TaskInterrupted(self._stopping) from None
            raise ProcessExited(f"{self.label}: cannot write to the task process: {exc}") from None
        return future

    def forget(self, task_id: str) -> None:
        """Stop waiting for a task's answer (the worker gave up on it)."""
        future = self._pending.pop(task_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def close_stdin(self) -> None:
        """Send end-of-file: a runqy process finishes what it was sent, then exits."""
        if self._proc is not None and self._proc.stdin is not None:
            async with self._write_lock:
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    self._proc.stdin.close()
                    await self._proc.stdin.wait_closed()

    # -- stopping ----------------------------------------------------------------------

    def _signal(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # the whole session: what the command started too

    async def kill(self, reason: str) -> None:
        """Kill the process at once (tasks in flight fail with `TaskInterrupted(reason)`)."""
        if self._proc is None:
            return
        self._stopping = self._stopping or reason
        self._signal(signal.SIGKILL)
        await self.wait_exited()

    async def stop(self, reason: str, grace: float, term_grace: float = TERM_GRACE) -> None:
        """Stop gracefully: end-of-file on stdin, `grace` seconds to exit, then SIGTERM,
        `term_grace` seconds more, then SIGKILL. Tasks still in flight fail with
        `TaskInterrupted(reason)`."""
        if self._proc is None:
            return
        self._stopping = self._stopping or reason
        await self.close_stdin()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, term_grace)):
            try:
                async with asyncio.timeout(wait):
                    await self._exited.wait()
                break
            except TimeoutError:
                log.warning("%s: pid %s still running; sending %s", self.label, self.pid, sig.name)
                self._signal(sig)
        await self.wait_exited()

    # -- reading -----------------------------------------------------------------------

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        async for line in read_lines(stream, self.max_line):
            self._on_line(line)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the exit, read what the process wrote before it, then fail what it
        left unanswered."""
        self.returncode = await proc.wait()
        # Its last lines may still be in the pipes; a child it started may hold them open.
        await asyncio.wait(self._readers, timeout=1.0)
        self._signal(signal.SIGKILL)  # whatever is left of its session
        _, late = await asyncio.wait(self._readers, timeout=1.0)
        for reader in late:
            reader.cancel()
        self._on_exit()

    def _on_line(self, line: bytes | object) -> None:
        if line is TOO_LONG:
            log.warning("%s: dropped a stdout line over %d bytes", self.label, self.max_line)
            return
        assert isinstance(line, bytes)
        if not line.strip():
            return
        text = line.decode("utf-8", errors="replace")
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("%s: stdout line that is not JSON skipped: %.500s", self.label, text)
            return
        if not isinstance(message, dict):
            log.warning("%s: stdout line that is not an object skipped: %.500s", self.label, text)
            return
        task_id = message.get("task_id")
        if task_id is None or task_id == "":
            self._on_status(message, text)
            return
        future = self._pending.pop(task_id, None) if isinstance(task_id, str) else None
        if future is None:
            log.warning("%s: answer for a task it was not given skipped: %.500s", self.label, text)
            return
        if not future.done():
            future.set_result(Outcome.from_response(message))

    def _on_status(self, message: dict[str, Any], text: str) -> None:
        status = message.get("status")
        ready = self._ready
        if ready is not None and not ready.done():
            if status == "ready":
                log.info("%s: pid %s is ready", self.label, self.pid)
                self.ready = True
                ready.set_result(None)
                return
            if status == "error":
                error = message.get("error") or "no reason given"
                ready.set_exception(StartupFailed(f"the process reported an error: {error}"))
                return
        log.debug("%s: status line: %.500s", self.label, text)

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for line in read_lines(stream, self.max_line):
            if line is TOO_LONG:
                log.info(
                    "%s[%s] (a stderr line over %d bytes)", self.label, self.pid, self.max_line
                )
            elif isinstance(line, bytes):
                log.info("%s[%s] %s", self.label, self.pid, line.decode("utf-8", "replace"))

    def _on_exit(self) -> None:
        code = self.returncode
        describe = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                StartupFailed(f"the process exited with {describe} before it was ready")
            )
            self._ready.exception()  # retrieved: start() may be gone already
        pending, self._pending = self._pending, {}
        for task_id, future in pending.items():
            if future.done():
                continue
            if self._stopping is not None:
                future.set_exception(TaskInterrupted(self._stopping))
            else:
                future.set_exception(
                    ProcessExited(f"the task process exited with {describe} during task {task_id}")
                )
        if self._stopping is None:
            log.error("%s: pid %s exited with %s", self.label, self.pid, describe)
        else:
            log.info("%s: pid %s stopped (%s): %s", self.label, self.pid, self._stopping, describe)
        self._exited.set()
