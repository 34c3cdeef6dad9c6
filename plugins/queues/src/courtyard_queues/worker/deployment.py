"""Preparing a queue's deployment on the worker's machine.

Under the worker's folder (`--workdir`), each queue has a folder of its own (named after
the queue, without its sub-queue) holding:

- `repo/`: a shallow clone of `git_url` at `branch`. When it is there already, the
  branch's newest commit is fetched and checked out instead (tracked files are reset,
  untracked files that are not ignored are removed). A clone is made beside it and moved
  into place with one rename, so an interrupted clone never looks like a good one.
- `venv/`: a virtual environment, made with `uv venv` when uv is on the PATH, else with
  `python -m venv`; the requirements file is installed into it with `uv pip install` or
  `pip install`, and again only when the file (or the installer) changed. Both tools read
  their usual settings from the environment (`UV_INDEX_URL`, `UV_OFFLINE`,
  `PIP_INDEX_URL`, `PIP_NO_INDEX`, ...).

The work happens under an exclusive lock on the queue's folder, so two workers sharing a
`--workdir` take turns. Git never prompts (`GIT_TERMINAL_PROMPT=0`): private repositories
need credentials that git finds by itself (an SSH key, a credential helper).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .messages import DeploymentSpec

log = logging.getLogger("courtyard.worker")

GIT_TIMEOUT = 600.0
INSTALL_TIMEOUT = 1800.0
READY_MARK = ".courtyard-ready"
REQUIREMENTS_MARK = ".courtyard-requirements"
INSTALLERS = ("auto", "uv", "pip")
WORKER_SECRETS = ("COURTYARD_API_KEY", "RUNQY_API_KEY")  # never passed to task code
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def redact(url: str) -> str:
    """`url` without the credentials it may carry (`https://user:token@host/...`)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)


class DeploymentError(Exception):
    """The deployment could not be prepared (the message says which step and why)."""


@dataclass(frozen=True)
class Deployment:
    """A prepared deployment: the code, the folder commands run in, and the venv."""

    repo: Path
    code: Path
    venv: Path
    commit: str

    @property
    def bin(self) -> Path:
        """The venv's folder of executables."""
        return self.venv / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> Path:
        """The venv's Python."""
        return self.bin / ("python.exe" if os.name == "nt" else "python")


def queue_folder(queue: str) -> str:
    """The folder name of a queue's deployment: its base name (`inference.high` ->
    `inference`), with anything but letters, digits, `_`, `-` and `.` replaced."""
    base = queue.split(".", 1)[0] or queue
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    return name if name.strip(".") else f"_{name}"


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await asyncio.shield(proc.wait())


async def _run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float,
    what: str,
) -> str:
    """Run a command to its end and return its output (stdout and stderr together).

    Credentials in URLs are removed from the output and the errors.

    :raises DeploymentError: it could not start, failed, or outlived `timeout`.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise DeploymentError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        await _kill(proc)
        raise DeploymentError(f"{what}: no result after {timeout:g} s") from None
    except BaseException:  # the worker is stopping: leave nothing running
        await _kill(proc)
        raise
    text = redact(output.decode("utf-8", errors="replace").strip())
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        raise DeploymentError(f"{what} failed (exit status {proc.returncode}):\n{tail}")
    if text:
        log.debug("%s:\n%s", what, text)
    return text


@contextlib.asynccontextmanager
async def _locked(folder: Path) -> AsyncIterator[None]:
    """Hold an exclusive lock on `folder` (another worker waits its turn)."""
    with (folder / ".lock").open("a") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not waited:
                    log.info("waiting for another worker preparing %s", folder)
                    waited = True
                await asyncio.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "LC_ALL": "C"}


def _remove(path: Path) -> None:
    """Remove a folder by renaming it first, so that no half-removed folder keeps its name."""
    if not path.exists():
        return
    doomed = path.with_name(f".{path.name}-old-{uuid.uuid4().hex[:8]}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


async def _origin(repo: Path) -> str | None:
    if not (repo / ".git").exists():
        return None
    try:
        url = await _run(
            ["git", "-C", str(repo), "remote", "get-url", "origin"],
            env=_git_env(),
            timeout=30,
            what="git remote get-url",
        )
    except DeploymentError:
        return None
    return url.strip()


async def checkout(spec: DeploymentSpec, repo: Path) -> str:
    """Clone `spec.git_url` at `spec.branch` into `repo`, or bring `repo` up to date;
    return the commit checked out."""
    if shutil.which("git") is None:
        raise DeploymentError("git is not installed (it fetches the deployment's code)")
    env = _git_env()
    git = ["git", "-c", "advice.detachedHead=false"]
    if await _origin(repo) == spec.git_url:
        ref = spec.branch or "HEAD"
        await _run(
            [*git, "-C", str(repo), "fetch", "--depth", "1", "--", "origin", ref],
            env=env,
            timeout=GIT_TIMEOUT,
            what=f"git fetch of {redact(spec.git_url)} at {ref}",
        )
        await _run(
            [*git, "-C", str(repo), "reset", "--hard", "FETCH_HEAD"],
            env=env,
            timeout=GIT_TIMEOUT,
            what="git reset",
        )
        await _run(
            [*git, "-C", str(repo), "clean", "-fd"], env=env, timeout=GIT_TIMEOUT, what="git clean"
        )
    else:
        staging = repo.with_name(f".{repo.name}-new-{uuid.uuid4().hex[:8]}")
        branch = ["--branch", spec.branch] if spec.branch else []
        try:
            await _run(
                [
                    *git,
                    "clone",
                    "--depth",
                    "1",
                    "--single-branch",
                    *branch,
                    "--",
                    spec.git_url,
                    str(staging),
                ],
                env=env,
                timeout=GIT_TIMEOUT,
                what=f"git clone of {redact(spec.git_url)}"
                + (f" at {spec.branch}" if spec.branch else ""),
            )
            _remove(repo)
            staging.rename(repo)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    commit = await _run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], env=env, timeout=30, what="git rev-parse"
    )
    return commit.strip()


def _inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused when it would lead outside `root`."""
    if not relative:
        return root
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise DeploymentError(f"{what} {relative!r} leads outside the repository")
    return path


def _installer(choice: str) -> str:
    if choice not in INSTALLERS:
        raise DeploymentError(f"installer must be one of {', '.join(INSTALLERS)}")
    if choice == "auto":
        return "uv" if shutil.which("uv") else "pip"
    if choice == "uv" and shutil.which("uv") is None:
        raise DeploymentError("the installer is uv, but uv is not on the PATH")
    return choice


async def ensure_venv(venv: Path, python: str, installer: str) -> None:
    """Make the virtual environment unless a complete one is there."""
    mark = venv / READY_MARK
    if mark.exists() and mark.read_text(encoding="utf-8").strip() == python:
        return
    _remove(venv)  # an interrupted earlier attempt, or one made from another Python
    if installer == "uv":
        argv = ["uv", "venv", "--quiet", "--python", python, str(venv)]
    else:
        argv = [python, "-m", "venv", str(venv)]
    await _run(argv, timeout=INSTALL_TIMEOUT, what="creating the virtual environment")
    (venv / READY_MARK).write_text(f"{python}\n", encoding="utf-8")


async def install_requirements(requirements: Path, deployment: Deployment, installer: str) -> bool:
    """Install `requirements` into the venv unless they are installed already; True when
    an install ran."""
    digest = hashlib.sha256(requirements.read_bytes() + installer.encode()).hexdigest()
    mark = deployment.venv / REQUIREMENTS_MARK
    if mark.exists() and mark.read_text(encoding="utf-8").strip() == digest:
        return False
    mark.unlink(missing_ok=True)  # a failed install below must be retried next time
    if installer == "uv":
        argv = ["uv", "pip", "install", "--python", str(deployment.python)]
    else:
        argv = [str(deployment.python), "-m", "pip", "install", "--disable-pip-version-check"]
    argv += ["-r", str(requirements)]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    await _run(
        argv,
        cwd=deployment.code,
        env=env,
        timeout=INSTALL_TIMEOUT,
        what=f"installing {requirements.name}",
    )
    mark.write_text(digest + "\n", encoding="utf-8")
    return True


async def prepare(
    spec: DeploymentSpec,
    workdir: Path,
    queue: str,
    *,
    installer: str = "auto",
    python: str | None = None,
) -> Deployment:
    """Fetch the code, make the venv and install the requirements of `queue`'s deployment.

    :raises DeploymentError: naming the step that failed.
    """
    tool = _installer(installer)
    folder = workdir.resolve() / queue_folder(queue)
    folder.mkdir(parents=True, exist_ok=True)
    async with _locked(folder):
        repo = folder / "repo"
        at = f" at {spec.branch}" if spec.branch else ""
        log.info("fetching %s%s", redact(spec.git_url), at)
        commit = await checkout(spec, repo)
        code = _inside(repo, spec.code_path, "code_path")
        if not code.is_dir():
            raise DeploymentError(f"code_path {spec.code_path!r} is not a folder of the repository")
        deployment = Deployment(repo=repo, code=code, venv=folder / "venv", commit=commit)
        await ensure_venv(deployment.venv, python or sys.executable, tool)
        if spec.requirements_file:
            requirements = _inside(code, spec.requirements_file, "requirements_file")
            if requirements.is_file():
                if await install_requirements(requirements, deployment, tool):
                    log.info("installed %s with %s", spec.requirements_file, tool)
            else:
                log.warning("no %s in the repository: nothing installed", spec.requirements_file)
        log.info("deployment ready: commit %s in %s", commit[:12], code)
        return deployment


def task_environment(
    deployment: Deployment, vaults: Mapping[str, str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The task process's environment: the worker's own (less its API key), the venv
    first on the PATH, and the vault values as variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for name in (*WORKER_SECRETS, "PYTHONHOME"):
        env.pop(name, None)
    env["VIRTUAL_ENV"] = str(deployment.venv)
    env["PATH"] = os.pathsep.join(filter(None, [str(deployment.bin), env.get("PATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"  # the task's log lines reach the worker as they are written
    for key, value in vaults.items():
        if _ENV_NAME.match(key) and "\0" not in value:
            env[key] = value
        else:  # the value is a secret: name the key only
            log.warning("vault entry %r is not a valid environment variable name: skipped", key)
    return env


def startup_argv(command: str, deployment: Deployment) -> list[str]:
    """`startup_cmd` split as a POSIX shell would (no shell runs it); a leading `python`
    or `python3` is the venv's Python."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DeploymentError(f"startup_cmd cannot be parsed: {exc}") from None
    if not argv:
        raise DeploymentError("startup_cmd is empty")
    if _PYTHON.match(argv[0]):
        argv[0] = str(deployment.python)
    return argv
