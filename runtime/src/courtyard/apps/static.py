"""Serving a static app version: content types, ETag and Last-Modified with 304, SPA
fallback, and no path that leaves the version folder."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

from ..asgi import Receive, Scope, Send, header, send_error
from .registry import AppVersion

CHUNK = 256 * 1024
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")


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


def _content_type(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith(_TEXT_TYPES) else kind


def _not_modified(scope: Scope, etag: str, mtime: float) -> bool:
    if (match := header(scope, b"if-none-match")) is not None:
        return match.strip() == "*" or etag in (tag.strip() for tag in match.split(","))
    if (since := header(scope, b"if-modified-since")) is not None:
        try:
            return int(mtime) <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False
    return False


async def serve_static(
    version: AppVersion, path: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer a GET or HEAD for `path` (relative to the app's base) from `version`."""
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(
            send,
            405,
            "METHOD_NOT_ALLOWED",
            "static apps answer GET and HEAD",
            headers=[(b"allow", b"GET, HEAD")],
        )
        return
    found = _locate(version, path)
    if found is None and version.config.spa:
        found = _locate(version, version.config.index)
    if found is None:
        await send_error(send, 404, "NOT_FOUND", f"{path or '/'} is not part of {version.key}")
        return
    file, folder = found
    if folder and not path.endswith("/"):
        # A folder's index links relative to the folder: /docs -> /docs/.
        location = quote(scope.get("root_path", "") + scope["path"] + "/", safe="/@^~")
        headers = [(b"location", location.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 308, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    stat = file.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = [
        (b"etag", etag.encode()),
        (b"last-modified", formatdate(stat.st_mtime, usegmt=True).encode()),
        (b"cache-control", b"no-cache"),  # revalidate: a new version may replace it
    ]
    if _not_modified(scope, etag, stat.st_mtime):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers += [
        (b"content-type", _content_type(file).encode()),
        (b"content-length", str(stat.st_size).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    # Opened once: a version deleted meanwhile still finishes (the inode lives on).
    fd = await asyncio.to_thread(os.open, file, os.O_RDONLY)
    try:
        while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        os.close(fd)
    await send({"type": "http.response.body", "body": b""})
