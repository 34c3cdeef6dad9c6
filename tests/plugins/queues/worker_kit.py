"""Helpers of the worker tests: local git repositories of task code, and task programs.

The task programs are written for runqy's Python runner (`runqy_python`) exactly as its
users write them, or speak the stdio protocol by hand where a test needs a misbehaving
process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GIT = [
    "git",
    "-c",
    "user.name=Courtyard Tests",
    "-c",
    "user.email=tests@courtyard.invalid",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "init.defaultBranch=main",
]

# A runqy task module, long_running: @load runs once, @task for each task. It appends
# "<task_id> <pid>" to the file named by RUNS_FILE for every task it runs, so a test can
# count executions; the payload can ask it to sleep, fail, crash or echo an env variable
# (sleep_once and crash_once name a marker file: only the first run sleeps or crashes).
RUNQY_TASKS = """
import os
import sys
import time

from runqy_python import RetryableError, load, task

{runner_import}


@load
def setup():
    return {{"loaded_by": os.getpid()}}


@task
def handle(payload, ctx):
    runs = os.environ.get("RUNS_FILE")
    task_id = payload.get("id", "?") if isinstance(payload, dict) else "?"
    if runs:
        with open(runs, "a", encoding="utf-8") as handle:
            handle.write(f"{{task_id}} {{os.getpid()}}\\n")
    if not isinstance(payload, dict):
        return {{"echo": payload}}
    print("handling", task_id)  # runqy_python sends print() to stderr
    if payload.get("sleep"):
        marker = payload.get("sleep_once")
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            time.sleep(payload["sleep"])
    if payload.get("fail"):
        raise ValueError(payload["fail"])
    if payload.get("retryable"):
        raise RetryableError(payload["retryable"])
    if payload.get("crash"):
        marker = payload.get("crash_once")
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            os._exit(3)
    if payload.get("env"):
        return {{"env": os.environ.get(payload["env"])}}
    return {{"ok": True, "pid": os.getpid(), "loaded_by": ctx["loaded_by"], "n": payload.get("n")}}


if __name__ == "__main__":
    {runner_call}
"""


def runqy_module(mode: str = "long_running") -> str:
    """The source of a runqy task module using `run()` (long_running) or `run_once()`."""
    runner = "run" if mode == "long_running" else "run_once"
    return RUNQY_TASKS.format(
        runner_import=f"from runqy_python import {runner}", runner_call=f"{runner}()"
    )


def git(*args: str, cwd: Path) -> str:
    """Run git in `cwd` and return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        [*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True, env=env
    )
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str], branch: str = "main") -> str:
    """A git repository at `path` with `files` committed on `branch`; the commit id."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", cwd=path)
    git("checkout", "--quiet", "-B", branch, cwd=path)
    return commit(path, files, "task code")


def commit(path: Path, files: dict[str, str], message: str) -> str:
    """Write `files` into the repository at `path` and commit them; the commit id."""
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    git("add", "--all", cwd=path)
    git("commit", "--quiet", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def python() -> str:
    """The interpreter the tests run on (runqy_python is installed in it)."""
    return sys.executable


def alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# -- a worker process --------------------------------------------------------------------


class WorkerProcess:
    """A `courtyard worker` subprocess, its output in a log file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def log(self) -> str:
        """Everything the worker wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the worker's log shows `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited ({self.process.returncode}):\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the worker's log:\n{self.log}")
            time.sleep(0.05)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the worker to exit and return its exit status; one still running
        then logs its state (SIGUSR1), is killed, and fails the test with its log."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            self.kill()
            raise AssertionError(f"the worker still runs after {timeout} s:\n{self.log}") from None

    def terminate(self) -> None:
        """Send SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL and reap the process."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_worker(
    server: str,
    queue: str,
    folder: Path,
    *options: str,
    api_key: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "worker",
) -> WorkerProcess:
    """Start `courtyard worker` for `queue` of `server`, working in `folder`.

    Installs come from uv's cache (UV_OFFLINE): no test touches the network.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.log"
    argv = [sys.executable, "-m", "courtyard", "worker", "--server", server, "--queue", queue]
    argv += ["--workdir", str(folder / "work"), *options]
    if api_key is not None:
        argv += ["--api-key", api_key]
    base = {k: v for k, v in os.environ.items() if k not in ("RUNQY_API_KEY", "COURTYARD_API_KEY")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**base, "UV_OFFLINE": "1", "PIP_NO_INDEX": "1", **(env or {})},
        )
    return WorkerProcess(process, log_path)
