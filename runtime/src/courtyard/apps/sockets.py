"""Reaching a worker: the folders its unix sockets live in, and the connections to it.

Each worker listens on `worker.sock` (HTTP) and `ws.sock` (WebSockets) in a folder of its
own, `<runtime_dir>/w<pid>-<n>/`
(the runtime's pid, a number), the only folder of the runtime's its sandbox sees. If those
paths would be too long for AF_UNIX, a short private folder under the system's temporary
directory is used instead.

A crash of the runtime loses nothing here: the folders it leaves are removed by the next
pool that uses the same `runtime_dir` (their pid names a process that no longer runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import struct
import tempfile
from pathlib import Path

SOCKET_NAME = "worker.sock"  # HTTP
WS_SOCKET_NAME = "ws.sock"  # WebSockets
CHUNK = 256 * 1024
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux, 103 on macOS


class Connection:
    """A stream to a worker (HTTP/1.1 kept alive, or one WebSocket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> Connection:
        """A new connection to the unix socket at `path`."""
        reader, writer = await asyncio.open_unix_connection(path, limit=CHUNK)
        return cls(reader, writer)

    def peer_pid(self) -> int | None:
        """The process id of the socket's listener, as the kernel reports it (Linux)."""
        sock = self.writer.get_extra_info("socket")
        if sock is None or not hasattr(socket, "SO_PEERCRED"):
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return int(pid) or None

    def usable(self) -> bool:
        """Still open, and nothing unexpected waiting to be read."""
        # typeshed leaves out StreamReader's private `_buffer` (what is read but not taken).
        return not (
            self.writer.is_closing() or self.reader.at_eof() or self.reader._buffer  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        """Close without waiting."""
        self.writer.close()


class SocketFolders:
    """Hands out the workers' socket folders under `runtime_dir` (created 0o700).

    :ivar folder: where they go, once the first has been handed out.
    """

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.folder: Path | None = None
        self._own_folder = False
        self._numbers = itertools.count(1)

    def new(self) -> Path:
        """A new worker's own socket folder (created when it starts)."""
        if self.folder is None:
            folder = self.runtime_dir
            probe = folder / f"w{os.getpid()}-{10**6}" / SOCKET_NAME
            if len(os.fsencode(probe)) > _MAX_SOCKET_PATH:
                folder = Path(tempfile.mkdtemp(prefix="courtyard-"))
                self._own_folder = True
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
            _remove_stale_sockets(folder)
            self.folder = folder
        return self.folder / f"w{os.getpid()}-{next(self._numbers)}"

    def close(self) -> None:
        """Remove the short private folder, if one was made."""
        if self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _remove_stale_sockets(folder: Path) -> None:
    """Delete socket folders (and sockets) left by runtimes that died without `close()`
    (named w<pid>-<n>)."""
    for path in folder.glob("w*-*"):
        pid = path.name[1:].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        except PermissionError:
            pass  # another user's live process
