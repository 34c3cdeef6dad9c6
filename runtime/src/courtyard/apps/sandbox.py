"""Bubblewrap sandboxes for app workers: finding `bwrap`, the user a worker drops to, the
command line that confines one worker, and a self-test.

What a sandboxed worker sees (everything else of the host's file system is absent):

- read-only: /usr and the /bin, /sbin, /lib* links or folders; a few /etc files that DNS,
  TLS and user look-ups need (`ETC_FILES`); the Python interpreter's prefixes (the
  virtual environment and its base installation); `worker_main.py` (and the `tree.py` it
  loads); its own version folder;
- read-write: its app's data folder (`<data_dir>/app-data/<name>/`, kept across restarts),
  its own socket folder (mounted at `/run/courtyard`), a private `/tmp` and `/dev/shm`;
- fresh PID, IPC and mount namespaces (its own `/proc` shows only its own processes), and
  a fresh network namespace when the app's `network` setting is false.

When the runtime runs as root, bwrap does the mounts as root and `setpriv` (util-linux)
then drops the worker to the `apps_sandbox_user` (its uid, its primary group, no
supplementary groups, no capabilities, an empty bounding set) before any app code runs.
Run as another user, bwrap uses an unprivileged user namespace and the worker keeps that
user's uid.

The worker process is the namespace's PID 1 (`--as-pid-1`): when it exits, the kernel
kills whatever it left in the sandbox. This module keeps no state; a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PACKAGE = "bubblewrap"
SOCKET_DIR_INSIDE = "/run/courtyard"  # where a worker finds its own socket folder
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc files a Python program may need for DNS, TLS, time zones, user and MIME look-ups.
# None holds a secret (shadow passwords live in /etc/shadow, which is not among them).
ETC_FILES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
)
# The environment of bwrap and setpriv themselves: nothing the app chose (an LD_PRELOAD
# there would run before the sandbox exists, or as root). The app's own environment
# reaches the worker on stdin, after the uid drop.
LAUNCH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
SELF_TEST_TIMEOUT = 15.0


class SandboxUnavailable(Exception):
    """Workers cannot be sandboxed on this machine; the message says why."""


@dataclass(frozen=True)
class Sandbox:
    """How to confine a worker on this machine.

    :ivar bwrap: the bwrap executable.
    :ivar user: `(uid, gid)` to drop to (the runtime runs as root), else None.
    :ivar setpriv: the setpriv executable, set with `user`.
    :ivar python: folders and files of the interpreter and the worker, bound read-only.
    :ivar sized_tmpfs: this bwrap can cap a tmpfs (`--size`, bubblewrap 0.7 and later).
    """

    bwrap: str
    user: tuple[int, int] | None
    setpriv: str | None
    python: tuple[str, ...]
    sized_tmpfs: bool = True

    @classmethod
    def locate(
        cls,
        bwrap: str = "bwrap",
        user: str = "nobody",
        extra: Iterable[str] = (),
        protect: Iterable[Path] = (),
    ) -> Sandbox:
        """The sandbox for this machine, without running anything yet.

        :param bwrap: a command name looked up on PATH, or a path.
        :param user: the user workers drop to when the runtime is root.
        :param extra: more read-only paths the worker needs (such as `worker_main.py`).
        :param protect: the runtime's own folders (its data): no read-only bind of the
            interpreter may hold one.
        :raises SandboxUnavailable: no bwrap, an unknown or root `user`, no setpriv, an
            interpreter whose folders hold a protected one.
        """
        found = shutil.which(bwrap)
        if found is None:
            raise SandboxUnavailable(f"{bwrap!r} is not on PATH")
        drop: tuple[int, int] | None = None
        setpriv: str | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise SandboxUnavailable(f"apps_sandbox_user {user!r} is no user here") from None
            if entry.pw_uid == 0 or entry.pw_gid == 0:
                raise SandboxUnavailable(f"apps_sandbox_user {user!r} is root (uid or gid 0)")
            drop = (entry.pw_uid, entry.pw_gid)
            setpriv = shutil.which("setpriv", path=os.defpath + ":/usr/bin:/bin")
            if setpriv is None:
                raise SandboxUnavailable("setpriv (Debian package util-linux) is not installed")
        python = _python_paths(extra)
        for folder in protect:
            inner = os.path.realpath(folder)
            for path in python:
                if inner == path or inner.startswith(path.rstrip("/") + "/"):
                    raise SandboxUnavailable(
                        f"the Python installation {path} holds the runtime's {folder}: "
                        "a worker would see it"
                    )
        try:
            usage = subprocess.run(
                [found, "--help"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"cannot run {found}: {exc}") from None
        return cls(found, drop, setpriv, python, sized_tmpfs="--size" in usage)

    def command(
        self,
        argv: Sequence[str],
        *,
        socket_dir: Path,
        root: Path | None = None,
        data: Path | None = None,
        network: bool = True,
        size_mb: int = 0,
        info_fd: int | None = None,
    ) -> list[str]:
        """The command line that runs `argv` confined.

        :param socket_dir: the worker's own socket folder, seen inside as
            `SOCKET_DIR_INSIDE`.
        :param root: the app's version folder (read-only, and the working directory).
        :param data: the app's data folder (read-write).
        :param network: False: a network namespace of its own (loopback only).
        :param size_mb: the size of the private /tmp and /dev/shm; 0 for the default.
        :param info_fd: a descriptor bwrap writes `{"child-pid": ...}` to, the host's pid
            of the sandboxed process.
        """
        size = ["--size", str(size_mb * 1024 * 1024)] if size_mb > 0 and self.sized_tmpfs else []
        args = [
            self.bwrap,
            "--unshare-pid",
            "--unshare-ipc",
            # The worker is PID 1: its death ends every process it left in the sandbox.
            "--as-pid-1",
            "--die-with-parent",
            # No --new-session: the pool starts bwrap in a session of its own, with pipes
            # and no terminal, and signals that process group to stop the whole sandbox.
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            *size,
            "--tmpfs",
            "/tmp",
            "--perms",
            "1777",
            *size,
            "--tmpfs",
            "/dev/shm",
        ]
        if not network:
            args.append("--unshare-net")
        mounts = _Mounts(args)
        for tree in SYSTEM_TREES:
            if os.path.islink(tree):
                args += ["--symlink", os.readlink(tree), tree]
            elif os.path.isdir(tree):
                mounts.bind("--ro-bind", tree, tree)
        mounts.folder("/etc")
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}"):
                mounts.bind("--ro-bind", f"/etc/{name}", f"/etc/{name}")
        for path in self.python:
            mounts.bind("--ro-bind", path, path)
        if root is not None:
            mounts.bind("--ro-bind", str(root), str(root))
            args += ["--chdir", str(root)]
        if data is not None:
            mounts.bind("--bind", str(data), str(data))
        mounts.bind("--bind", str(socket_dir), SOCKET_DIR_INSIDE)
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        args.append("--")
        if self.user is not None:
            assert self.setpriv is not None
            uid, gid = self.user
            args += [
                self.setpriv,
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return [*args, *argv]

    def prepare_folder(self, path: Path) -> None:
        """Create `path` (mode 0700) for the worker's user to write in; its parents are
        created too, readable by all (0755), owned by the runtime."""
        for parent in reversed(path.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        if path.is_symlink() or not path.is_dir():
            raise OSError(f"{path} is not a folder")
        if self.user is not None and os.geteuid() == 0:
            os.chown(path, *self.user, follow_symlinks=False)
        path.chmod(0o700)

    async def self_test(self, timeout: float = SELF_TEST_TIMEOUT) -> None:
        """Run the interpreter once in a sandbox like a worker's.

        :raises SandboxUnavailable: with what bwrap (or Python) printed.
        """
        # It also catches an interpreter the worker's user cannot read, and a uid drop
        # that did not happen.
        check = "import os, sys; sys.exit(7 if os.getuid() == 0 else 0)" if self.user else ""
        folder = Path(tempfile.mkdtemp(prefix="courtyard-sandbox-test-"))
        try:
            self.prepare_folder(folder / "socket")
            command = self.command(
                [sys.executable, "-I", "-S", "-c", check],
                socket_dir=folder / "socket",
                size_mb=16,  # every option a worker's command uses
            )
            try:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=LAUNCH_ENV,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SandboxUnavailable(f"cannot run {self.bwrap}: {exc}") from None
            try:
                output, _ = await asyncio.wait_for(process.communicate(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                raise SandboxUnavailable(f"the self-test took over {timeout:g} s") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if process.returncode != 0:
            said = output.decode("utf-8", "replace").strip()[:2000] or "nothing"
            raise SandboxUnavailable(
                f"the self-test failed (exit code {process.returncode}); it said: {said}"
            )


class _Mounts:
    """Adds bind mounts to a bwrap command line, creating their missing parent folders
    readable by all (bwrap would create them with mode 0700, which the worker's user
    could not cross)."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.made = {"/", "/tmp", "/proc", "/dev", "/dev/shm"}
        self.bound: list[str] = []  # read-only trees whose inside exists already

    def folder(self, path: str) -> None:
        if path in self.made or self._inside_bound(path):
            return
        parent = os.path.dirname(path)
        if parent != path:
            self.folder(parent)
        self.args += ["--perms", "0755", "--dir", path]
        self.made.add(path)

    def bind(self, how: str, source: str, dest: str) -> None:
        parent = os.path.dirname(dest)
        if parent != dest:
            self.folder(parent)
        self.args += [how, source, dest]
        self.made.add(dest)
        if os.path.isdir(source):
            self.bound.append(dest)

    def _inside_bound(self, path: str) -> bool:
        return any(path == tree or path.startswith(tree.rstrip("/") + "/") for tree in self.bound)


def _python_paths(extra: Iterable[str]) -> tuple[str, ...]:
    """The interpreter's prefixes and `extra`, as given and resolved, nested ones left out
    (and those under /usr, which is bound anyway)."""
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
        *extra,
    ]
    paths: list[str] = []
    for candidate in candidates:
        for path in (os.path.abspath(candidate), os.path.realpath(candidate)):
            if os.path.exists(path) and path not in paths:
                paths.append(path)
    covering = [*(t for t in SYSTEM_TREES if os.path.isdir(t) and not os.path.islink(t))]

    def inside(path: str, tree: str) -> bool:
        return path != tree and path.startswith(tree.rstrip("/") + "/")

    kept = [
        path
        for path in paths
        if path not in covering
        and not any(inside(path, other) for other in [*paths, *covering] if other != path)
    ]
    return tuple(kept)


__all__ = [
    "DEBIAN_PACKAGE",
    "ETC_FILES",
    "LAUNCH_ENV",
    "SOCKET_DIR_INSIDE",
    "Sandbox",
    "SandboxUnavailable",
]
