"""Serving a static app version: content types, ETag and Last-Modified with 304, SPA
fallback, and no path that leaves the version folder.

What a path resolves to (the file, its ETag, its headers, and for a small file its bytes)
is looked up once and kept in the version's `StaticFiles`: a version folder does not
change while installed (an overwrite installs a new folder, and the registry's next scan,
at once on this instance and within its `ttl` on others, makes new `AppVersion` objects
with empty caches). A request for a known file then costs no system call, and a small
file is sent from memory. A large one is sent by the server itself where it offers ASGI's
path-send extension (granian does), else read in chunks in a thread as it is sent.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from ..asgi import Scope, Send, send_error


class _Settings(Protocol):
    @property
    def index(self) -> str:
        """The index file's name."""

    @property
    def spa(self) -> bool:
        """Whether unknown paths get the index file."""


class AppVersion(Protocol):
    """What serving needs of a static version: `registry.AppVersion`, which holds a
    `StaticFiles` (so this module cannot import the registry, which imports it)."""

    @property
    def root(self) -> Path:
        """The version folder."""

    @property
    def config(self) -> _Settings:
        """Its settings."""

    @property
    def files(self) -> StaticFiles:
        """What its paths resolved to so far."""

    @property
    def key(self) -> str:
        """`name@version`."""


CHUNK = 256 * 1024
# ASGI's extension for a server that sends a file by its path. A file gone between its
# look-up and the send (its version removed that instant) then gets the server's own 404.
PATH_SEND = "http.response.pathsend"
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")


@dataclass(frozen=True)
class StaticFile:
    """A path's answer, worked out once: the file, whether the path named its folder,
    the validators and headers, and its bytes when it is small."""

    file: Path
    folder: bool
    etag: str
    mtime: float
    size: int
    headers: tuple[tuple[bytes, bytes], ...]  # etag, last-modified, cache-control
    content_type: bytes
    body: bytes | None

    @functools.cached_property
    def ok_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers of its 200 answer, made once."""
        return (
            *self.headers,
            (b"content-type", self.content_type),
            (b"content-length", str(self.size).encode()),
        )


class StaticFiles:
    """The paths of one version looked up so far (a bounded LRU, misses included), and
    the small files' bytes (bounded in total)."""

    MAX_PATHS = 2048
    MAX_FILE_BYTES = 64 * 1024  # files up to this size are kept in memory
    MAX_BYTES = 8 * 1024 * 1024  # in memory for one version, at most

    def __init__(self) -> None:
        self._paths: OrderedDict[str, StaticFile | None] = OrderedDict()
        self._bytes = 0

    async def get(self, version: AppVersion, path: str) -> StaticFile | None:
        """What `path` resolves to in `version`; None when it names no file in it."""
        if path in self._paths:
            self._paths.move_to_end(path)
            return self._paths[path]
        budget = max(0, min(self.MAX_FILE_BYTES, self.MAX_BYTES - self._bytes))
        found = await asyncio.to_thread(_look_up, version, path, budget)
        if path in self._paths:  # a request beside this one looked it up meanwhile
            return self._paths[path]  # its bytes are counted once
        self._paths[path] = found
        if found is not None and found.body is not None:
            self._bytes += len(found.body)
        while len(self._paths) > self.MAX_PATHS:
            _, dropped = self._paths.popitem(last=False)
            if dropped is not None and dropped.body is not None:
                self._bytes -= len(dropped.body)
        return found


def _locate(version: AppVersion, path: str) -> tuple[Path, bool] | None:
    """The file `path` names inside the version folder (never outside it), and whether
    `path` named a folder (whose index file it is)."""
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    root = version.root.resolve()
    candidate = root.joinpath(*parts)
    try:  # a name too long for the file system is a file that is not there
        folder = candidate.is_dir()
        if folder:
            candidate = candidate / version.config.index
        real = candidate.resolve(strict=True)
        if not real.is_file() or (real != root and root not in real.parents):
            return None
    except OSError:
        return None
    return real, folder


def _look_up(version: AppVersion, path: str, budget: int) -> StaticFile | None:
    """Resolve `path` and read what its answer needs (in a thread: it touches the disk)."""
    found = _locate(version, path)
    if found is None:
        return None
    file, folder = found
    try:
        stat = file.stat()
        body = file.read_bytes() if stat.st_size <= budget else None
    except OSError:
        return None
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    return StaticFile(
        file=file,
        folder=folder,
        etag=etag,
        mtime=stat.st_mtime,
        size=len(body) if body is not None else stat.st_size,
        headers=(
            (b"etag", etag.encode()),
            (b"last-modified", formatdate(stat.st_mtime, usegmt=True).encode()),
            (b"cache-control", b"no-cache"),  # revalidate: a new version may replace it
        ),
        content_type=_content_type(file).encode(),
        body=body,
    )


def _content_type(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith(_TEXT_TYPES) else kind


def _not_modified(scope: Scope, etag: str, mtime: float) -> bool:
    """Whether the request's validators match: If-None-Match, else If-Modified-Since."""
    match = since = None
    for name, value in scope.get("headers", ()):  # one pass: this runs on every request
        if name == b"if-none-match" and match is None:
            match = value.decode("latin-1")
        elif name == b"if-modified-since" and since is None:
            since = value.decode("latin-1")
    if match is not None:
        return match.strip() == "*" or etag in (tag.strip() for tag in match.split(","))
    if since is not None:
        try:
            return int(mtime) <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False
    return False


async def serve_static(
    version: AppVersion,
    path: str,
    scope: Scope,
    send: Send,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer a GET or HEAD for `path` (relative to the app's base) from `version`.

    :param headers: added to every answer (the request's `X-Request-Id`).
    """
    if scope["method"] not in ("GET", "HEAD"):
        allow = (b"allow", b"GET, HEAD")
        message = "static apps answer GET and HEAD"
        await send_error(send, 405, "METHOD_NOT_ALLOWED", message, headers=[allow, *headers])
        return
    found = await version.files.get(version, path)
    if found is None and version.config.spa:
        found = await version.files.get(version, version.config.index)
    if found is None:
        message = f"{path or '/'} is not part of {version.key}"
        await send_error(send, 404, "NOT_FOUND", message, headers=headers)
        return
    if found.folder and not path.endswith("/"):
        # A folder's index links relative to the folder: /docs -> /docs/.
        location = quote(scope.get("root_path", "") + scope["path"] + "/", safe="/@^~")
        redirect = [(b"location", location.encode()), (b"content-length", b"0"), *headers]
        await send({"type": "http.response.start", "status": 308, "headers": redirect})
        await send({"type": "http.response.body", "body": b""})
        return
    if _not_modified(scope, found.etag, found.mtime):
        answer = [*found.headers, *headers]
        await send({"type": "http.response.start", "status": 304, "headers": answer})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = [*found.ok_headers, *headers]
    await send({"type": "http.response.start", "status": 200, "headers": answer})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
    elif found.body is not None:
        await send({"type": "http.response.body", "body": found.body})
    elif PATH_SEND in scope.get("extensions", ()):
        # The server reads and sends the file itself, without Python in the way (granian).
        await send({"type": PATH_SEND, "path": str(found.file)})
    else:
        await _send_file(found, send)


async def _send_file(found: StaticFile, send: Send) -> None:
    """A large file's bytes, read here as they are sent: `size` of them, as announced."""
    # Opened once: a version deleted meanwhile still finishes (the inode lives on).
    fd = await asyncio.to_thread(os.open, found.file, os.O_RDONLY)
    try:
        left = found.size
        while left > 0 and (chunk := await asyncio.to_thread(os.read, fd, min(CHUNK, left))):
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        os.close(fd)
    await send({"type": "http.response.body", "body": b""})
