"""`courtyard serve --workers N`: N server processes on one address, and the supervisor
that starts them, relays their events, lends them app workers and replaces those that die.

The supervisor (this process, which `courtyard serve` becomes) runs the checks a single
server runs before binding (short plugin secrets, no open server beyond loopback), then
holds the address (`binding.hold_address`: refused when anything holds it, even a server
sharing it with SO_REUSEPORT), and starts N server processes (supervised.py), each
serving as `courtyard serve` does alone, on its own socket bound with SO_REUSEPORT: the
kernel spreads the connections over them. It imports nothing of the server (no Quart
app, no database): it watches them, relays their events and holds their app workers.

- Events: with `event_bus = "memory"`, the supervisor is the hub of the processes' buses
  (hub.py; services/events_hub.py is the process's side): every process sees every event,
  with the same ids. With Redis, the processes share Redis's stream instead.
- App workers: the supervisor holds the one pool of the ASGI apps' workers, which the
  processes borrow from (apps/shared_pool.py): an app runs once however many processes
  serve it, and its workers outlive a process that dies. They stop after the processes.
- Start: each process says when its first generation serves; the supervisor logs once
  when all do. One that cannot start (its error: a plugin failing in strict mode, the
  database out of reach) stops all, and `courtyard serve` exits 1 with that error.
- A process that dies unexpectedly is replaced, after `BACKOFF` seconds, doubling while
  processes keep dying right after their start (within `QUICK_EXIT` s, or before
  serving); after `MAX_QUICK_EXITS` such deaths in a row the supervisor stops all and
  exits 1, saying why.
- SIGTERM or SIGINT: forwarded to every process, which stops accepting, finishes its
  requests in flight (`drain_timeout`) and runs its shutdown hooks; the supervisor exits
  0 once they all have (a process still running `KILL_AFTER` s after its drain time is
  killed). A process gets SIGTERM too if the supervisor dies (processes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from courtyard_sdk import StartupError

from ..security import is_loopback_host
from ..settings import usable_cores
from .binding import bind_address, hold_address
from .hub import Hub
from .processes import keep_environment_private

if TYPE_CHECKING:
    from ..apps.shared_pool import PoolHost
    from ..settings import Settings

log = logging.getLogger("courtyard.supervisor")

QUICK_EXIT = 10.0  # seconds: a process that dies sooner after its start died "at once"
MAX_QUICK_EXITS = 5
BACKOFF, MAX_BACKOFF = 0.5, 8.0  # seconds before a replacement starts
KILL_AFTER = 10.0  # seconds after drain_timeout before a stopping process is killed


def worker_count(settings: Settings) -> int:
    """The server processes `courtyard serve` runs: `workers`, or when it is 0 (auto),
    one per usable core when serving beyond loopback (production), one on loopback (a
    developer's machine)."""
    if settings.workers:
        return settings.workers
    return 1 if is_loopback_host(settings.host) else usable_cores()


def app_workers(settings: Settings) -> PoolHost:
    """The pool of the ASGI apps' workers the processes share, made as a single server
    process makes its own (dispatcher.py)."""
    from ..apps.pool import WorkerPool
    from ..apps.router import pool_options
    from ..apps.shared_pool import PoolHost

    return PoolHost(WorkerPool(**pool_options(settings)))


def supervise(settings: Settings, workers: int) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT (module docstring).

    :raises StartupError: the checks before binding refuse, the address is taken, the
        processes cannot start, or keep dying; naming why.
    :raises SettingsError: a plugin credential's secret is too short (nor `insecure`).
    """
    # Imported here: the checks read manifests and the keys, which watching does not need.
    from ..services.credentials import check_secrets
    from ..services.exposure import check_before_bind

    keep_environment_private()  # as a server does (server.py): app workers run as us
    check_secrets(settings)
    asyncio.run(check_before_bind(settings))
    try:
        held = hold_address(settings.host, settings.port)
    except OSError as exc:
        raise StartupError(
            f"cannot serve on http://{bind_address(settings.host, settings.port)}: {exc}"
        ) from None
    with held:
        # Port 0: the kernel chose one, which every process then shares.
        port = held.getsockname()[1]
        shared = settings.model_copy(update={"port": port, "workers": workers})
        asyncio.run(Supervisor(shared, workers).run())


@dataclass
class Process:
    """One server process (one life of worker `index`)."""

    index: int
    process: asyncio.subprocess.Process
    control: asyncio.StreamReader
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    error: str | None = None

    def outcome(self) -> str:
        """How it ended, for the log: its error, else its exit status."""
        code = self.process.returncode
        if self.error:
            return self.error
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


class Supervisor:
    """Starts, watches and stops the server processes (module docstring)."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.hub = (
            Hub(settings.event_history, self._stuck) if settings.event_bus == "memory" else None
        )
        self.processes: dict[int, Process] = {}
        self.apps: PoolHost | None = None  # made in run(): it needs the event loop
        self.stopping = False
        self.serving = False  # every process served once
        self.fatal: str | None = None
        self._done = asyncio.Event()
        self._failures: list[str] = []

    async def run(self) -> None:
        """Start the processes and supervise them until told to stop.

        :raises StartupError: see `supervise`.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._done.set)
        self.apps = apps = app_workers(self.settings)
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.workers)]
        await self._done.wait()
        self.stopping = True
        if self.fatal is None:
            log.info("stopping the worker processes")
        for proc in self.processes.values():
            _signal(proc, signal.SIGTERM)
        _, late = await asyncio.wait(keepers, timeout=self.settings.drain_timeout + KILL_AFTER)
        if late:
            for proc in self.processes.values():
                if proc.process.returncode is None:
                    log.warning(
                        "worker %d (pid %d) did not stop: killing it", proc.index, proc.process.pid
                    )
                    _signal(proc, signal.SIGKILL)
            await asyncio.wait(keepers)
        if self.hub is not None:
            self.hub.close()
        await apps.close()  # after the processes: no request is relayed any more
        if self.fatal is not None:
            raise StartupError(self.fatal)
        if self._failures:
            raise StartupError("; ".join(self._failures))
        log.info("every worker process stopped")

    def _fail(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
        self._done.set()

    async def _keep(self, index: int) -> None:
        """Keep worker `index` running until the supervisor stops."""
        quick = 0
        while not self._done.is_set():
            try:
                proc = await self._start(index)
            except OSError as exc:
                self._fail(f"cannot start worker {index}: {exc}")
                return
            if self._done.is_set():  # told to stop while it started: run() did not see it
                _signal(proc, signal.SIGTERM)
            await self._watch(proc)
            if self._done.is_set():  # stopping (it may have stopped first, on SIGINT)
                if proc.process.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self._failures.append(f"worker {index}: {proc.outcome()}")
                return
            if not self.serving:  # the first start: one that cannot start stops all
                self._fail(proc.error or f"worker {index} could not start ({proc.outcome()})")
                return
            quick = (
                quick + 1 if not proc.ready or time.monotonic() - proc.started < QUICK_EXIT else 1
            )
            if quick >= MAX_QUICK_EXITS:
                self._fail(
                    f"worker {index} keeps dying right after its start ({quick} times in a "
                    f"row; last: {proc.outcome()})"
                )
                return
            delay = min(BACKOFF * 2 ** (quick - 1), MAX_BACKOFF)
            log.error(
                "worker %d (pid %d) stopped unexpectedly (%s); a new one starts in %.1f s",
                index,
                proc.process.pid,
                proc.outcome(),
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), delay)

    async def _start(self, index: int) -> Process:
        """Start worker `index`: its control pipe, its hub connection, its settings."""
        control_read, control_write = os.pipe()
        hub_mine, hub_its = socket.socketpair() if self.hub is not None else (None, None)
        apps_mine, apps_its = socket.socketpair()
        passed = [control_write, apps_its.fileno()]
        passed += [hub_its.fileno()] if hub_its is not None else []
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "courtyard.servers.supervised",
                *("--index", str(index), "--parent", str(os.getpid())),
                *("--control-fd", str(control_write)),
                *("--hub-fd", str(hub_its.fileno() if hub_its is not None else -1)),
                *("--apps-fd", str(apps_its.fileno())),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=passed,
            )
        except OSError:
            os.close(control_read)
            for sock in (hub_mine, hub_its, apps_mine):
                if sock is not None:
                    sock.close()
            raise
        finally:
            os.close(control_write)
            apps_its.close()
            if hub_its is not None:
                hub_its.close()
        loop = asyncio.get_running_loop()
        control = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(control), os.fdopen(control_read, "rb")
        )
        proc = Process(index, process, control)
        self.processes[index] = proc
        if self.hub is not None and hub_mine is not None:
            await self.hub.attach(index, hub_mine)
        assert self.apps is not None
        await self.apps.attach(apps_mine)
        assert process.stdin is not None
        # The settings as they were read (pickled: exactly the same values), privately.
        process.stdin.write(pickle.dumps(self._settings_of(index)))
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        process.stdin.close()
        log.debug("worker %d started (pid %d)", index, process.pid)
        return proc

    def _settings_of(self, index: int) -> Settings:
        """The settings of worker `index`: the same, but for what names one process.

        An `instance_id` set for the server becomes `<instance_id>-w<index>`: each
        process follows the shared store's change log as an instance of its own, and
        skips the changes its own id made (services/replication.py). Unset, each process
        is `<hostname>-<pid>` already.
        """
        base = getattr(self.settings, "instance_id", None)
        if not base:
            return self.settings
        return self.settings.model_copy(update={"instance_id": f"{base[:120]}-w{index}"})

    async def _watch(self, proc: Process) -> None:
        """Follow `proc`'s control messages until it exits."""
        reading = asyncio.create_task(self._read_control(proc))
        await proc.process.wait()
        # What it said last is in the pipe; a child of its holding the pipe must not
        # keep us waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), 1.0)
        reading.cancel()
        if self.hub is not None:
            self.hub.detach(proc.index)

    async def _read_control(self, proc: Process) -> None:
        while line := await proc.control.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready"):
                proc.ready = True
                if self.serving:  # a replacement
                    log.info("worker %d serving (pid %d)", proc.index, proc.process.pid)
                elif len(self.processes) == self.workers and all(
                    p.ready for p in self.processes.values()
                ):
                    self.serving = True
                    log.info(
                        "courtyard serving on http://%s with %d worker processes",
                        bind_address(self.settings.host, self.settings.port),
                        self.workers,
                    )
            elif "error" in message:
                proc.error = str(message["error"])

    def _stuck(self, index: int) -> None:
        """Worker `index` leaves its events unread: replace it rather than let it lag."""
        proc = self.processes.get(index)
        if proc is not None and not self.stopping:
            log.error("worker %d does not read its events: stopping it", index)
            _signal(proc, signal.SIGTERM)


def _signal(proc: Process, signum: int) -> None:
    if proc.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signum)
