"""Running one job: its steps in order, in a fresh workspace, each step in its own
process group, with the job's environment; output line by line (stdout `info`, stderr
`warn`, the runner's own events `debug` and `error`), handed to `emit` as produced.

Executors: `native` (a shell on the host, resource limits with setrlimit and CPU
affinity) and `isolation` (the same shell inside a bubblewrap sandbox that sees only the
workspace, read-write, and a read-only system). The job's timeout and a cancel kill the
whole process group: SIGTERM, then SIGKILL two seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_LINE = 65000  # characters of one log line; longer output is cut into several lines
READ_LIMIT = 1024 * 1024
KILL_GRACE = 2.0
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
Emit = Callable[[str, str, str | None], None]  # level, message, step

_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_bytes(value: Any) -> int | None:
    """A Kubernetes-style quantity (`4Gi`, `512M`, a number of bytes) as bytes."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value) if value > 0 else None
    match = _QUANTITY.match(str(value))
    if match is None or match[2].lower() not in _UNITS:
        raise ValueError(f"not a quantity: {value!r}")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def parse_cpus(value: Any) -> int | None:
    """A CPU limit (`2000m`, `2`, `1.5`) as a whole number of CPUs (at least 1)."""
    if value is None:
        return None
    text = str(value).strip()
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, int(cores + 0.999)) if cores > 0 else None


@dataclass
class Limits:
    """Resource limits of a job's processes."""

    memory: int | None = None  # bytes of address space (RLIMIT_AS)
    file_size: int | None = None  # bytes of any one file written (RLIMIT_FSIZE)
    cpus: int | None = None  # CPUs the processes may run on (affinity)

    @classmethod
    def from_config(cls, limits: dict[str, Any] | None) -> Limits:
        """From a runner configuration's `resource_limits` (bad values are ignored)."""
        limits = limits or {}
        out = cls()
        with contextlib.suppress(ValueError, TypeError):
            out.memory = parse_bytes(limits.get("memory_limit"))
        with contextlib.suppress(ValueError, TypeError):
            out.file_size = parse_bytes(limits.get("disk_limit"))
        with contextlib.suppress(ValueError, TypeError):
            out.cpus = parse_cpus(limits.get("cpu_limit"))
        return out

    def __bool__(self) -> bool:
        return bool(self.memory or self.file_size or self.cpus)

    def apply(self) -> None:
        """In the child, before exec: set the limits (a fork-safe function)."""
        if self.memory:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        if self.file_size:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size, self.file_size))
        if self.cpus and hasattr(os, "sched_setaffinity"):
            available = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, available[: self.cpus])


@dataclass
class Outcome:
    """How a job ended."""

    status: str  # completed, failed, cancelled, timed_out
    exit_code: int | None
    error: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


def bwrap_command(workspace: Path, network: bool) -> list[str]:
    """The bubblewrap prefix of the `isolation` executor: a read-only view of the
    system's programs and libraries, the workspace read-write, a private /tmp, fresh
    namespaces (no network unless asked), killed with its parent."""
    command = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all"]
    if network:
        command.append("--share-net")
    for folder in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin", "/etc"):
        if os.path.exists(folder):
            kind = "--ro-bind" if not os.path.islink(folder) else "--symlink"
            if kind == "--symlink":
                command += [kind, os.readlink(folder), folder]
            else:
                command += [kind, folder, folder]
    command += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(workspace),
        str(workspace),
        "--chdir",
        str(workspace),
        "--setenv",
        "HOME",
        str(workspace),
    ]
    return command


class Job:
    """One job's run; `cancel()` stops it at once."""

    def __init__(
        self,
        spec: dict[str, Any],
        config: dict[str, Any],
        executor: str,
        work_root: Path,
        emit: Emit,
        runner_id: str,
    ) -> None:
        self.spec = spec
        self.config = config
        self.executor = executor
        self.work_root = work_root
        self.emit = emit
        self.runner_id = runner_id
        self.cancelled = asyncio.Event()
        self.cancel_reason = "cancelled"
        self._process: asyncio.subprocess.Process | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the job: the running step's process group is killed."""
        self.cancel_reason = reason
        self.cancelled.set()

    def environment(self, workspace: Path) -> dict[str, str]:
        """The job's environment: a few of the agent's variables (PATH, locale), CI's
        usual ones, then the job's own."""
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            {
                "HOME": str(workspace),
                "CI": "true",
                "COURTYARD_RUNNER_ID": self.runner_id,
                "COURTYARD_JOB_ID": self.spec["job_id"],
                "COURTYARD_JOB_NAME": self.spec["name"],
                "COURTYARD_JOB_ATTEMPT": str(self.spec.get("attempt", 1)),
                "COURTYARD_WORKSPACE": str(workspace),
            }
        )
        env.update(self.spec.get("environment") or {})
        return env

    async def run(self) -> Outcome:
        """Run every step; the outcome (the workspace is cleaned as configured)."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f"{self.spec['job_id']}-", dir=self.work_root))
        timeout = self.spec.get("timeout")
        deadline = None if not timeout else time.monotonic() + float(timeout)
        limits = Limits.from_config(self.config.get("resource_limits"))
        env = self.environment(workspace)
        results: list[dict[str, Any]] = []
        outcome = Outcome("completed", 0)
        self.emit("debug", f"Job started: {self.spec['job_id']} in {workspace}", None)
        try:
            for step in self.spec["steps"]:
                name = step["name"]
                if self.cancelled.is_set():
                    outcome = Outcome("cancelled", None, self.cancel_reason)
                    break
                self.emit("debug", f"Step started: {name}", name)
                started = time.monotonic()
                code, why = await self._step(step["run"], workspace, env, limits, deadline, name)
                results.append(
                    {"name": name, "exit_code": code, "duration": time.monotonic() - started}
                )
                if why == "timed_out":
                    self.emit("error", f"Step {name} killed: job timeout of {timeout} s", name)
                    outcome = Outcome("timed_out", code, f"timed out after {timeout} s")
                    break
                if why == "cancelled":
                    self.emit("error", f"Step {name} killed: {self.cancel_reason}", name)
                    outcome = Outcome("cancelled", code, self.cancel_reason)
                    break
                if code != 0:
                    self.emit("error", f"Step {name} failed with exit code {code}", name)
                    outcome = Outcome("failed", code, f"step {name} exited with {code}")
                    break
                self.emit("debug", f"Step finished: {name} (exit code 0)", name)
        except Exception as exc:  # the executor itself failed (no bwrap, a bad limit, ...)
            self.emit("error", f"Job could not run: {exc}", None)
            outcome = Outcome("failed", None, f"the runner could not run the job: {exc}")
        finally:
            outcome.steps = results
            self._clean(workspace, outcome.status)
        self.emit("debug", f"Job {outcome.status}: {self.spec['job_id']}", None)
        return outcome

    def _clean(self, workspace: Path, status: str) -> None:
        policy = self.config.get("cleanup_policy", "always")
        remove = (
            policy == "always"
            or (policy == "on_success" and status == "completed")
            or (policy == "on_failure" and status != "completed")
        )
        if remove:
            shutil.rmtree(workspace, ignore_errors=True)

    def _command(self, script: str, workspace: Path) -> list[str]:
        if self.executor == "isolation":
            if shutil.which("bwrap") is None:
                raise RuntimeError(
                    "the isolation executor needs bubblewrap (Debian package bubblewrap)"
                )
            network = bool((self.config.get("isolation_config") or {}).get("network"))
            return [*bwrap_command(workspace, network), "/bin/sh", "-c", script]
        if self.executor != "native":
            raise RuntimeError(f"the {self.executor} executor is not available on this agent")
        return ["/bin/sh", "-c", script]

    async def _step(
        self,
        script: str,
        workspace: Path,
        env: dict[str, str],
        limits: Limits,
        deadline: float | None,
        step: str,
    ) -> tuple[int | None, str | None]:
        """Run one step; its exit code and why it was stopped (None, `timed_out` or
        `cancelled`)."""
        process = await asyncio.create_subprocess_exec(
            *self._command(script, workspace),
            cwd=workspace,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one
            # Only with limits: a preexec_fn forces a slow fork where a spawn would do.
            preexec_fn=limits.apply if limits else None,
            limit=READ_LIMIT,
        )
        self._process = process
        readers = [
            asyncio.ensure_future(self._pump(process.stdout, "info", step)),
            asyncio.ensure_future(self._pump(process.stderr, "warn", step)),
        ]
        waiter = asyncio.ensure_future(process.wait())
        stopper = asyncio.ensure_future(self.cancelled.wait())
        why: str | None = None
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(
                {waiter, stopper}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                why = "cancelled" if stopper in done else "timed_out"
                await self._kill(process)
        finally:
            stopper.cancel()
            if not waiter.done():
                await self._kill(process)
            code = await waiter
            await asyncio.gather(*readers, return_exceptions=True)
            self._process = None
        return code, why

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the whole group, SIGKILL after `KILL_GRACE`."""
        for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            if grace is None:
                break
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), grace)
                # The shell is gone; its children in the group too, or they die now.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                return
            except TimeoutError:
                continue

    async def _pump(self, stream: asyncio.StreamReader | None, level: str, step: str) -> None:
        """Emit each line of `stream` as it comes (long lines in pieces)."""
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than READ_LIMIT: take what is there
                raw = await stream.read(READ_LIMIT)
            if not raw:
                return
            text = raw.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
            for start in range(0, max(1, len(text)), MAX_LINE):
                self.emit(level, text[start : start + MAX_LINE], step)
