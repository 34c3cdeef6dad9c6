"""The agent: one outbound long poll for jobs and control, heartbeats with real load,
jobs run by the executor, their output shipped as it comes.

It needs no inbound port. A job starts as soon as the server answers the poll that was
waiting for it. Stopping (SIGTERM, SIGINT, or `stop` from the server): no new jobs; the
running ones finish within the grace period, then are cancelled; the final state is
reported; then it exits (SIGTERM) or waits for `start` (a stop from the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from .executor import Job, Outcome

log = logging.getLogger("courtyard.runner")
FLUSH_SECONDS = 0.05
FLUSH_LINES = 2000
FLUSH_BYTES = 2 * 1024 * 1024  # a batch stays far below the server's 16 MiB body limit
POLL_WAIT = 25.0


class Unauthorized(Exception):
    """The server refused the token: the runner was deleted, or the token is wrong."""


def runner_id_of(token: str) -> str:
    """The runner a registration token belongs to (`crt_<uuid>_<secret>`)."""
    if not token.startswith("crt_") or len(token) < 42 or token[40] != "_":
        raise ValueError("not a runner registration token (crt_...)")
    return f"runner_{token[4:40]}"


class Shipper:
    """A job's (or the runner's) log lines, sent in order, in batches, as they come."""

    def __init__(self, agent: Agent, job_id: str | None) -> None:
        self.agent = agent
        self.job_id = job_id
        self.lines: list[dict[str, Any]] = []
        self.size = 0  # characters queued
        self.ready = asyncio.Event()
        self.closed = False
        self.task = asyncio.ensure_future(self._run())
        self.on_cancel: Any = None

    def emit(self, level: str, message: str, step: str | None) -> None:
        """Queue one line."""
        self.lines.append({"ts": time.time(), "level": level, "message": message, "step": step})
        self.size += len(message) + 64
        if len(self.lines) >= FLUSH_LINES or self.size >= FLUSH_BYTES:
            self.ready.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), FLUSH_SECONDS)
            self.ready.clear()
            while self.lines:
                count, size = 0, 0
                for line in self.lines[:FLUSH_LINES]:
                    size += len(line["message"]) + 64
                    if count and size > FLUSH_BYTES:
                        break
                    count += 1
                batch, self.lines = self.lines[:count], self.lines[count:]
                self.size = sum(len(line["message"]) + 64 for line in self.lines)
                await self._send(batch)
            if self.closed:
                return

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        path = f"jobs/{self.job_id}/logs" if self.job_id else "logs"
        for attempt in range(30):  # keep order: retry this batch before the next
            try:
                answer = await self.agent.post(path, {"lines": batch})
            except Unauthorized:
                return
            except httpx.HTTPError as exc:
                log.warning("sending log lines failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.2 * (attempt + 1)))
                continue
            if answer.get("cancel") and self.on_cancel is not None:
                self.on_cancel()
            return

    async def close(self) -> None:
        """Send what is left, then stop."""
        self.closed = True
        self.ready.set()
        await self.task


class Agent:
    """One runner's agent."""

    def __init__(
        self,
        url: str,
        token: str,
        work_dir: Path,
        executor: str | None = None,
        grace: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.runner_id = runner_id_of(token)
        self.work_dir = work_dir
        self.executor_override = executor
        self.grace = grace
        self.transport = transport  # tests: the server's app, in process
        self.handle_signals = handle_signals
        self.session = uuid.uuid4().hex
        self.state = "starting"
        self.config: dict[str, Any] = {}
        self.config_version = -1.0
        self.capabilities: list[str] = []
        self.executor = executor or "native"
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Jobs that ended here and are being reported: their slot is free, but the server
        # still counts them as running until the report lands, so polls still list them.
        self.finishing: set[str] = set()
        self.heartbeat_seconds = 10.0
        self.rtt_ms: float | None = None
        self.exit = asyncio.Event()
        self.wake = asyncio.Event()
        self.client: httpx.AsyncClient | None = None
        self.events: Shipper | None = None
        self.stopping: asyncio.Task[None] | None = None
        self.terminating: asyncio.Task[None] | None = None
        self.refused = False  # the server refused the token: exit 1

    # HTTP -----------------------------------------------------------------------------

    async def post(self, path: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
        """POST to `/api/runners/{id}/agent/{path}` with the token and the session."""
        assert self.client is not None
        answer = await self.client.post(
            f"/api/runners/{self.runner_id}/agent/{path}",
            json={"session": self.session, **body},
            timeout=timeout,
        )
        if answer.status_code == 401:
            raise Unauthorized(answer.text)
        answer.raise_for_status()
        return answer.json()

    # Running ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM (0) or until the server refuses the token (1)."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.terminate)
        headers = {"X-Runner-Token": self.token, "User-Agent": "courtyard-runner"}
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
        async with httpx.AsyncClient(
            base_url=self.url, headers=headers, limits=limits, transport=self.transport
        ) as client:
            self.client = client
            self.events = Shipper(self, None)
            try:
                await self.beat()
            except Unauthorized:
                log.error("the server refused the runner token")
                return 1
            self.state = "running"
            self.events.emit("debug", f"Agent started (session {self.session})", None)
            beats = asyncio.ensure_future(self._heartbeats())
            try:
                code = await self._poll_loop()
            finally:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)
                await self._finish_all()
                self.state = "stopped"
                with contextlib.suppress(Exception):
                    self.events.emit("debug", "Agent stopped", None)
                    await self.events.close()
                    await self.beat()
            return code

    def terminate(self) -> None:
        """SIGTERM: stop taking jobs, finish or (past the grace period) cancel, exit."""
        if self.terminating is None:
            log.info("stopping: finishing %d running job(s)", len(self.jobs))
            self.terminating = asyncio.ensure_future(self._stop(True, self.grace, exit_after=True))

    async def _stop(self, graceful: bool, timeout: float, exit_after: bool = False) -> None:
        self.state = "stopping"
        self.wake.set()
        if not graceful:
            timeout = 0.0
        pending = list(self.tasks.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                for job in list(self.jobs.values()):
                    job.cancel("cancelled: the runner stopped")
                await asyncio.wait(late)
        self.state = "stopped"
        if exit_after:
            self.exit.set()
        self.wake.set()

    async def _poll_loop(self) -> int:
        failures = 0
        while not self.exit.is_set():
            capacity = 0
            if self.state == "running":
                limit = int(self.config.get("max_concurrent_jobs", 1) or 1)
                capacity = max(0, limit - len(self.jobs) + len(self.finishing))
            body = {
                "wait": POLL_WAIT,
                # Until it has the configuration (its slots), the first poll answers at once.
                "config_version": self.config_version,
                "capacity": capacity,
                "running": list(self.jobs),
                "state": self.state,
            }
            self.wake.clear()
            poll = asyncio.ensure_future(self.post("poll", body, timeout=POLL_WAIT + 30))
            exit_wait = asyncio.ensure_future(self.exit.wait())
            await asyncio.wait({poll, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
            exit_wait.cancel()
            if not poll.done():  # exiting: what the poll may still bring is retried later
                poll.cancel()
                with contextlib.suppress(BaseException):
                    await poll
                break
            try:
                answer = poll.result()
                failures = 0
            except Unauthorized:
                log.error("the server refused the runner token: the runner was deleted?")
                self.refused = True
                break
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                log.warning("poll failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.2 * failures))
                continue
            await self._handle(answer)
        if self.refused:
            for job in self.jobs.values():
                job.cancel("cancelled: the runner was deleted")
            return 1
        return 0

    async def _handle(self, answer: dict[str, Any]) -> None:
        self.capabilities = list(answer.get("capabilities") or [])
        if answer.get("config_version") != self.config_version:
            first = self.config_version < 0
            self.config = dict(answer.get("config") or {})
            self.config_version = answer.get("config_version", 0.0)
            if first and not self.executor_override:
                self.executor = self.config.get("executor", "native")
            elif not first:
                self.events and self.events.emit("debug", "Configuration applied", None)
        for job_id in answer.get("cancel") or []:
            if job_id in self.jobs:
                self.jobs[job_id].cancel("cancelled by request")
        for message in answer.get("control") or []:
            await self._control(message)
        for spec in answer.get("jobs") or []:
            self._start_job(spec)

    async def _control(self, message: dict[str, Any]) -> None:
        action = message.get("action")
        graceful = bool(message.get("graceful"))
        timeout = float(message.get("timeout") or 0)
        reason = message.get("reason")
        assert self.events is not None
        said = f"Control received: {action}" + (f" ({reason})" if reason else "")
        self.events.emit("debug", said, None)
        if action == "start":
            if self.state in ("stopped", "stopping") and self.terminating is None:
                self.state = "running"
                self.events.emit("debug", "Runner started: taking jobs", None)
                await self.beat()
        elif action in ("stop", "restart"):
            # In the background: the poll goes on (cancels, a later start).
            self.stopping = asyncio.ensure_future(self._stop_then(action, graceful, timeout))

    async def _stop_then(self, action: str, graceful: bool, timeout: float) -> None:
        assert self.events is not None
        await self._stop(graceful, timeout)
        self.events.emit("debug", "Runner stopped: taking no jobs", None)
        with contextlib.suppress(httpx.HTTPError):
            await self.beat()
        if action == "restart" and self.terminating is None:
            # The same session: the process goes on, and a new session would make the
            # server take this agent's jobs of the old one for lost.
            if not self.executor_override:
                self.executor = self.config.get("executor", "native")
            self.state = "running"
            with contextlib.suppress(httpx.HTTPError):
                await self.beat()
            self.events.emit("debug", f"Runner restarted (executor {self.executor})", None)
        self.stopping = None
        self.wake.set()

    def _start_job(self, spec: dict[str, Any]) -> None:
        job_id = spec["job_id"]
        shipper = Shipper(self, job_id)
        job = Job(
            spec, dict(self.config), self.executor, self.work_dir, shipper.emit, self.runner_id
        )
        shipper.on_cancel = lambda: job.cancel("cancelled by request")
        self.jobs[job_id] = job
        self.tasks[job_id] = asyncio.ensure_future(self._run_job(job, shipper))

    async def _run_job(self, job: Job, shipper: Shipper) -> None:
        job_id = job.spec["job_id"]
        session = self.session
        try:
            outcome = await job.run()
        except Exception as exc:  # never leave a job unreported
            outcome = Outcome("failed", None, f"the agent failed: {exc}")
        await shipper.close()
        self.finishing.add(job_id)
        body = {
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "error": outcome.error,
            "steps": outcome.steps,
        }
        for attempt in range(20):
            try:
                assert self.client is not None
                answer = await self.client.post(
                    f"/api/runners/{self.runner_id}/agent/jobs/{job_id}/finish",
                    json={"session": session, **body},
                )
                if answer.status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(min(5.0, 0.2 * (attempt + 1)))
        self.jobs.pop(job_id, None)
        self.tasks.pop(job_id, None)
        self.finishing.discard(job_id)

    async def _finish_all(self) -> None:
        for job in self.jobs.values():
            job.cancel("cancelled: the agent is exiting")
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # Heartbeats ------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await self.beat()
            except Unauthorized:
                log.error("the server refused the runner token: the runner was deleted?")
                self.refused = True
                self.exit.set()
                return
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def beat(self) -> None:
        """One heartbeat: load, checks, state; its round trip is reported next time."""
        body = {"state": self.state, **self.measure()}
        started = time.monotonic()
        answer = await self.post("heartbeat", body)
        self.rtt_ms = (time.monotonic() - started) * 1000
        self.heartbeat_seconds = float(answer.get("heartbeat_seconds", self.heartbeat_seconds))

    def measure(self) -> dict[str, Any]:
        """Load and checks, measured now."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        disk = psutil.disk_usage(str(self.work_dir))
        memory = psutil.virtual_memory()
        checks: dict[str, Any] = {
            "disk_space": {"available_gb": disk.free / 1024**3},
            "memory": {"available_gb": memory.available / 1024**3},
        }
        if self.rtt_ms is not None:
            checks["connectivity"] = {"response_time_ms": self.rtt_ms}
        status: dict[str, str] = {}
        for capability in self.capabilities:
            if capability == "docker":
                version = docker_version()
                ok = version is not None
                checks["docker_daemon"] = (
                    {"status": "pass", "version": version}
                    if ok
                    else {"status": "fail", "message": "no Docker daemon reachable"}
                )
            elif capability == "isolation":
                ok = shutil.which("bwrap") is not None
            else:
                ok = True
            status[capability] = "available" if ok else "unavailable"
        error = None
        if self.executor not in ("native", "isolation"):
            error = f"the {self.executor} executor is not available on this agent"
        elif self.executor == "isolation" and shutil.which("bwrap") is None:
            error = "the isolation executor needs bubblewrap (Debian package bubblewrap)"
        return {
            "load": {
                "cpu_usage": psutil.cpu_percent(interval=None),
                "memory_usage": memory.percent,
                "disk_usage": disk.percent,
                "active_jobs": len(self.jobs),
            },
            "checks": checks,
            "capabilities_status": status,
            "error": error,
        }


def docker_version() -> str | None:
    """The Docker daemon's version over its socket, or None when none answers."""
    path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        import json

        return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["Version"])
    except (OSError, ValueError, KeyError, IndexError):
        return None
