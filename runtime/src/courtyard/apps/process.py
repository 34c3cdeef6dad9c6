"""One worker process: what the pool knows about it (`Worker`), and its supervision
(`Supervisor`): starting it, waiting until it listens, reading its output, watching it
exit, signalling and stopping it.

A worker is `worker_main.py`, run by the runtime's own Python (with the command line and
environment of launch.py), which imports the app and serves it (HTTP on granian,
WebSockets on Hypercorn) on two unix sockets in a folder of its own (sockets.py). What it
prints goes to the log, one line each; the first lines are kept for the message of a
start failure, which goes to the log only (it may hold secrets).

Sandbox (sandbox.py)
    Each worker runs under bubblewrap: it sees its version folder (read-only), its app's
    data folder under `app_data_dir` (read-write, kept across restarts), its socket folder,
    a private /tmp and the Python installation, and nothing else of the runtime; a runtime
    running as root drops it to `sandbox_user`. Without a working bwrap, workers are not
    started (502 APP_START_FAILED, and one error in the log) unless `allow_unsandboxed`.
    bwrap leads a session (process group) of its own, the sandboxed worker inside it:
    SIGTERM goes to the worker itself (it is PID 1 of its namespace, so bwrap would not pass
    it on), SIGKILL to the whole group; the worker's end takes the rest of the sandbox.

A crash of the runtime loses nothing here: workers die with it (bwrap's parent-death
signal, and the worker's watch on its stdin), and take what their app started with them
(tree.py).

A worker's end is its process's exit, never the end of its output: the pipes are the
pool's own, not asyncio's, because asyncio's `Process.wait()` also waits for every pipe
to close, which a process the app detached may hold open for ever. Output still unread a
second after the exit is given up.

Memory: every second, the resident memory of the worker and everything it started is
compared with `max_memory_mb`; past it, the worker is recycled (stopped gracefully, its
successor started by the next request). A limit inside the process would not do: a
framework may turn the `MemoryError` into a 500 and serve on, bloated.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from .config import WorkerApp
from .errors import START_FAILED, Refusal, WorkerGone
from .launch import find_sandbox, launch, worker_python_path
from .sandbox import Sandbox
from .sockets import SOCKET_NAME, WS_SOCKET_NAME, Connection, SocketFolders
from .tree import kill_descendants, resident_bytes

log = logging.getLogger("courtyard.apps.workers")  # the logger of every part of the pool
State = Literal["starting", "ready", "retiring", "stopping", "dead"]

_OUTPUT_HEAD_LINES = 20
_OUTPUT_HEAD_CHARS = 4000
_OUTPUT_AFTER_EXIT = 1.0  # seconds the output is read after the worker has exited
MEMORY_CHECK_INTERVAL = 1.0  # seconds between two looks at a worker's resident memory


class Reachable(abc.ABC):
    """A worker's sockets, and the connections kept to them: of a worker of this process's
    pool (`Worker`), or of one another process lent it (shared_pool.py).

    :ivar connections: kept-alive HTTP connections, idle.
    """

    app: WorkerApp
    token: bytes  # the secret the worker wants on every request (worker_main.py)
    socket_path: Path  # HTTP
    ws_socket_path: Path  # WebSockets

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.foreign_socket = False  # its socket led to another process (logged once)

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The worker's process id, as this process sees it."""

    @abc.abstractmethod
    async def crashed(self, exc: BaseException) -> Refusal:
        """The refusal for a broken exchange (sent only if the response has not started)."""

    async def connect(self, websocket: bool = False) -> Connection:
        """A kept-alive connection to the worker, or a new one (for a WebSocket: always a
        new one, to the worker's WebSocket socket)."""
        while not websocket and self.connections:
            connection = self.connections.pop()
            if connection.usable():
                return connection
            connection.close()
        try:
            return await self.open(websocket)
        except OSError as exc:
            raise WorkerGone(f"cannot connect: {exc}") from exc

    async def open(self, websocket: bool = False) -> Connection:
        """A new connection to the worker's socket, checked to be the worker's own.

        The socket's folder is writable by the app: it could put there a link to another
        program's socket (a database's, a container engine's) for the runtime to relay
        requests to. The peer's process id, from the kernel, must be the worker's.
        """
        connection = await Connection.open(self.ws_socket_path if websocket else self.socket_path)
        peer = connection.peer_pid()
        if peer is not None and peer != self.pid:
            connection.close()
            if not self.foreign_socket:  # once: a start polls every few milliseconds
                self.foreign_socket = True
                log.error(
                    "%s: the socket of worker %s leads to process %s: refused (the app may "
                    "have replaced it)",
                    self.app.key,
                    self.pid,
                    peer,
                )
            raise ConnectionRefusedError(f"the socket is not worker {self.pid}'s")
        return connection

    def close_connections(self) -> None:
        """Close its idle connections."""
        for connection in self.connections:
            connection.close()
        self.connections.clear()


class Worker(Reachable):
    """One worker process and what the pool knows about it."""

    def __init__(self, app: WorkerApp, socket_dir: Path) -> None:
        super().__init__()
        self.app = app
        self.socket_dir = socket_dir  # the worker's own: the only one its sandbox sees
        self.socket_path = socket_dir / SOCKET_NAME  # HTTP
        self.ws_socket_path = socket_dir / WS_SOCKET_NAME  # WebSockets
        self.token = secrets.token_hex(16).encode()
        self.process: asyncio.subprocess.Process | None = None  # bwrap, when sandboxed
        self.stdin: asyncio.WriteTransport | None = None  # closed: the worker exits
        self.output: asyncio.StreamReader | None = None  # its stdout and stderr
        self.output_pipe: asyncio.ReadTransport | None = None
        self.sandboxed = False
        self.app_pid: int | None = None  # the sandboxed worker's pid, as the host sees it
        self.state: State = "starting"
        self.started = time.monotonic()
        self.last_used = self.started
        self.active = 0
        self.served = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)
        self.exited = asyncio.Event()
        self.output_done = asyncio.Event()
        self.head: list[str] = []  # the first lines it printed
        self.head_chars = 0

    @property
    def pid(self) -> int | None:
        """The worker's process id (as the runtime sees it), once started."""
        if self.app_pid is not None:
            return self.app_pid
        return None if self.process is None else self.process.pid

    @property
    def usable(self) -> bool:
        """May serve requests (or will, once started)."""
        return self.state in ("starting", "ready", "retiring")

    def worn_out(self, now: float) -> bool:
        """Served its `max_requests`, or older than its `ttl`."""
        settings = self.app.settings
        return self.served >= settings.max_requests or now - self.started >= settings.ttl

    def note_output(self, line: str) -> None:
        """Keep the first lines for a start-failure message."""
        if len(self.head) < _OUTPUT_HEAD_LINES and self.head_chars < _OUTPUT_HEAD_CHARS:
            self.head.append(line)
            self.head_chars += len(line) + 1

    def output_head(self) -> str:
        """The first lines it printed, trimmed."""
        return "\n".join(self.head).strip()[:_OUTPUT_HEAD_CHARS]

    async def crashed(self, exc: BaseException) -> Refusal:
        """The refusal for a broken exchange (sent only if the response has not started).

        Waits (up to a second) to see whether the worker died, so that the death is noticed
        before this request is answered: the next request then starts a fresh worker
        instead of meeting a half-dead one.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 1.0)
        if self.exited.is_set() and self.process is not None:
            code = self.process.returncode
            why = f"The app's worker exited (code {code}) while handling the request"
        else:
            why = f"The app closed the connection unexpectedly ({exc or type(exc).__name__})"
        log.warning("%s: %s", self.app.key, why)
        return Refusal(502, "APP_CRASHED", why)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen, whoever awaits it (maybe nobody)."""
    if not future.cancelled():
        future.exception()


class Supervisor:
    """Starts worker processes, watches them and stops them; runs their background tasks.

    :param runtime_dir: where the workers' socket folders go (see sockets.py).
    :param app_data_dir: where each app's data folder goes (`<app_data_dir>/<name>/`).
    :param start_timeout: how long a worker may take to import its app and listen.
    :param grace: how long a stopping worker gets after SIGTERM before SIGKILL.
    :param allow_unsandboxed: without a working sandbox, run workers unsandboxed.
    :param sandbox_user: the user sandboxed workers run as when the runtime is root.
    :param bwrap: the bubblewrap command (looked up on PATH) or its path.
    :param changed: called when a worker stops counting as live (it is stopping, or dead).
    """

    def __init__(
        self,
        runtime_dir: Path,
        app_data_dir: Path,
        *,
        start_timeout: float,
        grace: float,
        allow_unsandboxed: bool,
        sandbox_user: str,
        bwrap: str,
        changed: Callable[[Worker], None],
    ) -> None:
        self.runtime_dir = runtime_dir
        self.app_data_dir = app_data_dir
        self.start_timeout = start_timeout
        self.grace = grace
        self.allow_unsandboxed = allow_unsandboxed
        self.sandbox_user = sandbox_user
        self.bwrap = bwrap
        self.sockets = SocketFolders(runtime_dir)
        self._changed = changed
        self._sandbox_checked: asyncio.Future[Sandbox | None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._python_path = worker_python_path()

    def new_worker(self, app: WorkerApp) -> Worker:
        """The record of a worker for `app`, not started yet."""
        return Worker(app, self.sockets.new())

    async def start(self, worker: Worker) -> None:
        """Start the process and wait until it listens.

        :raises Refusal: it could not start (502 APP_START_FAILED) or was stopped meanwhile.
        """
        app = worker.app
        try:
            sandbox = await self._sandbox()
            parts = app.name.split("/")
            if app.name.startswith("/") or {"", ".", ".."} & set(parts):
                raise OSError(f"{app.name!r} cannot name a data folder")
            data = self.app_data_dir.joinpath(*parts)
            if sandbox is not None:
                sandbox.prepare_folder(worker.socket_dir)
                sandbox.prepare_folder(data)
            else:
                worker.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                data.mkdir(mode=0o700, parents=True, exist_ok=True)
        except Refusal:
            self._never_started(worker)
            raise
        except OSError as exc:
            log.error("%s: cannot prepare the worker's folders: %s", app.key, exc)
            self._never_started(worker)
            raise Refusal(502, "APP_START_FAILED", START_FAILED) from None
        plan = launch(
            app,
            token=worker.token,
            socket_dir=worker.socket_dir,
            data=data,
            sandbox=sandbox,
            grace=self.grace,
            python_path=self._python_path,
        )
        worker.sandboxed = sandbox is not None
        stdin_read, stdin_write = os.pipe()
        output_read, output_write = os.pipe()
        info_read, info_write = plan.info if plan.info else (None, None)
        try:
            process = await asyncio.create_subprocess_exec(
                *plan.command,
                stdin=stdin_read,
                stdout=output_write,
                stderr=output_write,
                cwd=app.root,
                env=plan.env,
                start_new_session=True,
                pass_fds=(info_write,) if info_write is not None else (),
            )
        except OSError as exc:
            log.error("%s: cannot start a worker: %s", app.key, exc)
            for fd in (stdin_write, output_read, info_read):
                if fd is not None:
                    os.close(fd)
            self._never_started(worker)
            raise Refusal(502, "APP_START_FAILED", START_FAILED) from None
        finally:
            for fd in (stdin_read, output_write, info_write):
                if fd is not None:
                    os.close(fd)
        worker.process = process
        await self._connect_pipes(worker, stdin_write, output_read)
        assert worker.stdin is not None
        worker.stdin.write(plan.stdin)
        self.background(self._read_output(worker))
        self.background(self._watch(worker))
        if app.settings.max_memory_mb:
            self.background(self._watch_memory(worker))
        if info_read is not None:
            worker.app_pid = await _child_pid(info_read)
        if worker.state == "stopping":  # the pool stopped it first
            _kill(process.pid)
        await self._wait_until_listening(worker)

    @staticmethod
    async def _connect_pipes(worker: Worker, stdin: int, output: int) -> None:
        """Its stdin and output as the event loop's transports (see the module docstring:
        why these pipes are not asyncio's)."""
        loop = asyncio.get_running_loop()
        worker.stdin, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(stdin, "wb", buffering=0)
        )
        worker.output = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(worker.output, loop=loop)
        worker.output_pipe, _ = await loop.connect_read_pipe(
            lambda: protocol, os.fdopen(output, "rb", buffering=0)
        )

    def _never_started(self, worker: Worker) -> None:
        """Settle a worker that never got a process."""
        worker.state = "dead"
        with contextlib.suppress(OSError):
            shutil.rmtree(worker.socket_dir)
        worker.exited.set()
        self._changed(worker)

    async def _sandbox(self) -> Sandbox | None:
        """The sandbox new workers run in; None to run them unsandboxed (allowed by the
        operator). Found and tested once, on the first start.

        :raises Refusal: 502 APP_START_FAILED when there is no sandbox and none may be
            skipped.
        """
        if self._sandbox_checked is None:
            protect = [self.runtime_dir, self.app_data_dir]
            found = find_sandbox(
                self.bwrap, self.sandbox_user, self._python_path, protect, self.allow_unsandboxed
            )
            self._sandbox_checked = self.background(found)  # close() waits for it
        sandbox = await asyncio.shield(self._sandbox_checked)
        if sandbox is None and not self.allow_unsandboxed:
            raise Refusal(502, "APP_START_FAILED", START_FAILED)
        return sandbox

    async def _wait_until_listening(self, worker: Worker) -> None:
        deadline = worker.started + self.start_timeout
        delay = 0.005
        while not worker.exited.is_set() and worker.state != "stopping":
            try:
                connection = await worker.open()
            except OSError:  # not listening yet (or not its socket: see Worker.open)
                pass
            else:
                worker.connections.append(connection)
                return
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), delay)
            delay = min(delay * 2, 0.02)
        if worker.state == "stopping":
            raise Refusal(503, "NOT_READY", "The app's worker was stopped while starting")
        if not worker.exited.is_set():
            self.stop_later(worker, kill=True)
            await worker.exited.wait()
            why = f"did not listen within {self.start_timeout:g} s"
        else:
            why = f"exited with code {worker.process.returncode if worker.process else '?'}"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.output_done.wait(), 1.0)
        log.error(
            "%s: worker %s %s before serving:\n%s",
            worker.app.key,
            worker.pid,
            why,
            worker.output_head() or "(it printed nothing)",
        )
        raise Refusal(502, "APP_START_FAILED", START_FAILED)

    async def _read_output(self, worker: Worker) -> None:
        """Log what the worker prints, keeping the first lines; never let the pipe fill."""
        assert worker.output is not None
        stream = worker.output
        pending = b""
        try:
            while chunk := await stream.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > 8192:
                    lines.append(pending)
                    pending = b""
                for raw in lines:
                    _output_line(worker, raw)
            if pending:
                _output_line(worker, pending)
        finally:
            worker.output_done.set()

    async def _watch(self, worker: Worker) -> None:
        """Wait for the process to end, then clean up after it."""
        assert worker.process is not None
        code = await worker.process.wait()
        if worker.stdin is not None:
            worker.stdin.close()
        _signal_group(worker.process.pid, signal.SIGKILL)  # whatever the app left running
        try:
            await asyncio.wait_for(worker.output_done.wait(), _OUTPUT_AFTER_EXIT)
        except TimeoutError:  # a process it started escaped and holds the pipe
            if worker.output_pipe is not None:
                worker.output_pipe.close()
        if worker.state in ("ready", "retiring"):
            log.warning("%s: worker %d exited with code %s", worker.app.key, worker.pid, code)
        worker.state = "dead"
        worker.close_connections()
        with contextlib.suppress(OSError):
            shutil.rmtree(worker.socket_dir)
        worker.exited.set()
        self._changed(worker)

    async def _watch_memory(self, worker: Worker) -> None:
        """Recycle the worker once it and what it started hold more than `max_memory_mb`
        resident."""
        limit = worker.app.settings.max_memory_mb * 1024 * 1024
        while worker.state in ("starting", "ready", "retiring"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), MEMORY_CHECK_INTERVAL)
            if worker.pid is None or worker.state not in ("ready", "retiring"):
                continue
            used = await asyncio.to_thread(resident_bytes, worker.pid)
            if used > limit and worker.state in ("ready", "retiring"):
                log.warning(
                    "%s: worker %d holds %d MiB, over its max_memory_mb (%d): recycling it",
                    worker.app.key,
                    worker.pid,
                    used // (1024 * 1024),
                    limit // (1024 * 1024),
                )
                self.stop_later(worker)

    def stop_later(self, worker: Worker, kill: bool = False) -> None:
        """Stop a worker in the background; from now on it takes no request and no longer
        counts as live."""
        if worker.state in ("stopping", "dead"):
            if kill and worker.process is not None and worker.state == "stopping":
                _kill(worker.process.pid)
            return
        worker.state = "stopping"
        worker.close_connections()
        self._changed(worker)
        self.background(self.stop(worker, kill=kill))

    async def stop(self, worker: Worker, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the worker's process group; SIGKILL after `grace`."""
        if worker.state == "dead":
            return
        worker.state = "stopping"
        worker.close_connections()
        self._changed(worker)
        if worker.process is None:  # still being spawned: start() kills it
            await worker.exited.wait()
            return
        if kill:
            _kill(worker.process.pid)
        else:
            _terminate(worker)
        try:
            await asyncio.wait_for(worker.exited.wait(), self.grace)
        except TimeoutError:
            log.warning("%s: worker %d ignored SIGTERM; killing it", worker.app.key, worker.pid)
            _kill(worker.process.pid)
            await worker.exited.wait()

    def background(self, coroutine: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `coroutine` as a task that `close()` waits for; its failure is logged."""
        task: asyncio.Future[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("worker pool task failed", exc_info=exc)

    async def close(self) -> None:
        """Wait for every background task (stop the workers first), remove the socket
        folder if it is a private one."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.sockets.close()


# -- processes ---------------------------------------------------------------------------


def _output_line(worker: Worker, raw: bytes) -> None:
    line = raw.decode("utf-8", "replace").rstrip()
    worker.note_output(line)
    log.info("[%s pid %s] %s", worker.app.key, worker.pid, line)


def _signal_group(pid: int, sig: int) -> None:
    """Signal a worker's process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill(pid: int) -> None:
    """SIGKILL a worker's process group, and first every process it started, so that
    none outlives it (see tree.py)."""
    kill_descendants(pid)
    _signal_group(pid, signal.SIGKILL)


def _terminate(worker: Worker) -> None:
    """Ask a worker to stop (SIGTERM): it finishes its requests, then exits."""
    assert worker.process is not None
    if not worker.sandboxed:
        _signal_group(worker.process.pid, signal.SIGTERM)
    elif worker.app_pid is not None:
        # To the worker itself: bwrap passes no signal on, and would die of this one.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(worker.app_pid, signal.SIGTERM)
    else:  # its pid is not known yet: it has not started serving either
        _kill(worker.process.pid)


async def _child_pid(fd: int) -> int | None:
    """The host's pid of the sandboxed process, from bwrap's --info-fd (None if bwrap
    failed before starting it)."""

    def read() -> bytes:
        data = b""
        with os.fdopen(fd, "rb") as pipe:
            while len(data) < 65536 and (chunk := pipe.read1(4096)):
                data += chunk
        return data

    try:
        info = json.loads(await asyncio.to_thread(read) or b"{}")
        pid = info.get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None
