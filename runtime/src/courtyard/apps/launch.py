"""What a worker process is started with: its command line (confined by the sandbox, or
not), its environment and what it reads on stdin; and the sandbox chosen for workers.

The environment is the app's own `env` plus a short allow-list (`ENV_ALLOW_LIST`), never
the runtime's variables. The worker's secret goes on its stdin, never in argv or env; in
the sandbox the environment goes there too, read by `worker_env.py` after the uid drop, so
that bwrap and setpriv never see a variable the app chose. Nothing here keeps state.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import site
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import WorkerApp
from .sandbox import DEBIAN_PACKAGE, LAUNCH_ENV, SOCKET_DIR_INSIDE, Sandbox, SandboxUnavailable
from .sockets import SOCKET_NAME, WS_SOCKET_NAME

log = logging.getLogger("courtyard.apps.workers")  # the logger of every part of the pool

WORKER_MAIN = Path(__file__).with_name("worker_main.py")
WORKER_ENV = Path(__file__).with_name("worker_env.py")  # a sandboxed worker's first step
WORKER_TREE = Path(__file__).with_name("tree.py")  # loaded by worker_main.py
# Loaded by worker_main.py too: counting its requests in flight, as the runtime's server does.
WORKER_INFLIGHT = Path(__file__).parents[1] / "servers" / "inflight.py"
WORKER_FILES = (WORKER_MAIN, WORKER_ENV, WORKER_TREE, WORKER_INFLIGHT)  # the sandbox binds them
ADDRESS_SPACE_FACTOR = 4  # RLIMIT_AS, as a multiple of max_memory_mb

# Variables a worker inherits from the runtime: what Python and common libraries need to
# run, nothing that could hold a secret. Everything else comes from the app's own `env`.
ENV_ALLOW_LIST = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONHOME",
    "LD_LIBRARY_PATH",
    "SYSTEMROOT",
)
APP_DATA_ENV = "COURTYARD_APP_DATA"
# What worker_main.py imports besides the standard library.
_WORKER_IMPORTS = (
    "granian",
    "hypercorn",
    "h11",
    "h2",
    "hpack",
    "hyperframe",
    "priority",
    "wsproto",
    "uvloop",
)


@dataclass(frozen=True)
class Launch:
    """How to start one worker process.

    :ivar info: the pipe bwrap writes the worker's host pid to, `(read, write)`: the
        caller passes the write end to the process, then closes it.
    """

    command: list[str]
    env: dict[str, str]
    stdin: bytes
    info: tuple[int, int] | None = None


def launch(
    app: WorkerApp,
    *,
    token: bytes,
    socket_dir: Path,
    data: Path,
    sandbox: Sandbox | None,
    grace: float,
    python_path: str,
) -> Launch:
    """The command, environment and stdin of a worker for `app` (in `sandbox`, if any)."""
    inside = SOCKET_DIR_INSIDE if sandbox else str(socket_dir)
    argv = [
        sys.executable,
        "-P",
        str(WORKER_MAIN),
        "--socket",
        inside + "/" + SOCKET_NAME,
        "--ws-socket",
        inside + "/" + WS_SOCKET_NAME,
        "--root",
        str(app.root),
        "--entry",
        app.entry,
        "--address-space-mb",
        # The address space, a backstop for a runaway allocation between two checks of
        # the resident memory (process.py), which is what the limit is about; generous, as
        # threads reserve address space they never use (glibc: 64 MiB per arena).
        str(ADDRESS_SPACE_FACTOR * app.settings.max_memory_mb),
        "--graceful-timeout",
        str(grace),
    ]
    env = environment(app, data, sandbox is not None, python_path)
    stdin = token + b"\n"  # the secret, never in argv or env
    if sandbox is None:
        if not app.settings.network:
            log.warning("%s: network = false is not enforced without the sandbox", app.key)
        return Launch(argv, env, stdin)
    # A first, isolated interpreter (-I -S: no environment, no site-packages) reads the
    # app's environment on stdin and starts the worker with it: bwrap and setpriv never
    # see a variable the app chose.
    argv[1:2] = ["-I", "-S", str(WORKER_ENV)]
    blob = json.dumps(env).encode()
    info_read, info_write = os.pipe()
    command = sandbox.command(
        argv,
        socket_dir=socket_dir,
        root=app.root,
        data=data,
        network=app.settings.network,
        size_mb=app.settings.max_memory_mb,
        info_fd=info_write,
    )
    return Launch(command, LAUNCH_ENV, b"%d\n" % len(blob) + blob + stdin, (info_read, info_write))


def environment(app: WorkerApp, data: Path, sandboxed: bool, python_path: str) -> dict[str, str]:
    """The worker's environment: the allow-list, the runtime's few, the app's own."""
    env = {name: os.environ[name] for name in ENV_ALLOW_LIST if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # the app's prints reach the log as they happen
    # glibc reserves 64 MiB of address space per arena, up to one per thread, and the
    # worker's server (granian) runs threads: under the address-space cap (max_memory_mb
    # times ADDRESS_SPACE_FACTOR) the reservations alone could fail an allocation the
    # resident memory would allow. The app's own setting wins.
    env["MALLOC_ARENA_MAX"] = "2"
    env[APP_DATA_ENV] = env["HOME"] = str(data)  # the one place it may write to keep
    if sandboxed:
        env["TMPDIR"] = "/tmp"  # its private one
    env.update(app.settings.env)
    if python_path:
        own = app.settings.env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (own, python_path) if p)
    return env


def worker_python_path() -> str:
    """PYTHONPATH for the workers: where what worker_main imports lives, unless the
    interpreter finds it anyway (the usual case: the same virtual environment)."""
    known = {os.path.realpath(p) for p in site.getsitepackages()}
    with contextlib.suppress(AttributeError):
        known.add(os.path.realpath(site.getusersitepackages()))
    folders: list[str] = []
    for name in _WORKER_IMPORTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        parent = os.path.dirname(next(iter(spec.submodule_search_locations)))
        if os.path.realpath(parent) not in known and parent not in folders:
            folders.append(parent)
    return os.pathsep.join(folders)


async def find_sandbox(
    bwrap: str,
    user: str,
    python_path: str,
    protect: Iterable[Path],
    allow_unsandboxed: bool,
) -> Sandbox | None:
    """The sandbox for workers, located and self-tested; None (and a line in the log) if
    there is none here."""
    try:
        extra = [str(path) for path in WORKER_FILES]
        extra += filter(None, python_path.split(os.pathsep))
        sandbox = Sandbox.locate(bwrap, user, extra, protect)
        await sandbox.self_test()
    except (SandboxUnavailable, OSError) as exc:
        if allow_unsandboxed:
            log.warning(
                "app workers run UNSANDBOXED (apps_allow_unsandboxed = true), as the "
                "runtime's own user: every app can read and change what the runtime "
                "can. No sandbox: %s",
                exc,
            )
        else:
            log.error(
                "app workers cannot start: no sandbox (%s). Install the Debian package "
                "%s (apt-get install %s), or set apps_allow_unsandboxed = true to run "
                "ASGI apps unsandboxed (then apps:install equals admin).",
                exc,
                DEBIAN_PACKAGE,
                DEBIAN_PACKAGE,
            )
        return None
    log.info(
        "app workers are sandboxed with %s%s",
        sandbox.bwrap,
        f" as uid {sandbox.user[0]}" if sandbox.user else "",
    )
    return sandbox
