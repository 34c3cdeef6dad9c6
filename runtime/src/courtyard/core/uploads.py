"""Receiving an uploaded archive: multipart, streamed to disk, validated and extracted
beside its destination (see archives.py and installs.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from courtyard_sdk import ApiError
from quart import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..archives import ArchiveError, Limits, archive_kind, extract, flatten_root
from ..installs import remove_path, staging_dir
from ..services.store import Archive
from ..settings import Settings


def limits(settings: Settings) -> Limits:
    """The archive limits the settings set."""
    return Limits(
        max_archive_bytes=settings.upload_max_bytes,
        max_extracted_bytes=settings.upload_max_extracted_bytes,
        max_entries=settings.upload_max_entries,
        max_ratio=settings.upload_max_ratio,
        max_path_length=settings.upload_max_path_length,
        max_depth=settings.upload_max_depth,
    )


def _too_large(limit: int) -> ArchiveError:
    return ArchiveError(413, "ARCHIVE_TOO_LARGE", f"the upload exceeds {limit} bytes")


@dataclass(frozen=True)
class Received:
    """An uploaded archive: the folder holding its checked content, and the archive
    itself, for the shared store (services/store.py)."""

    content: Path
    archive: Archive


def _read(stream: BinaryIO) -> bytes:
    stream.seek(0)
    return stream.read()


@contextlib.asynccontextmanager
async def received_archive(parent: Path, settings: Settings) -> AsyncIterator[Received]:
    """Receive the request's `file` part and yield its content and the archive.

    The content is extracted into a hidden staging folder inside `parent` (so that the
    caller can move it into place with one rename); the staging folder goes afterwards,
    whatever happens.

    :raises ApiError: NO_FILE_PROVIDED, INVALID_FILE_TYPE, ARCHIVE_TOO_LARGE, or any
        refusal of the archive's content.
    """
    bounds = limits(settings)
    # Served by `courtyard serve`, the request limits (limits.py) stop the body at the
    # limit while it streams, before the multipart parser spools it; the checks here
    # hold wherever the runtime is served without them (in-process tests, say).
    if (request.content_length or 0) > bounds.max_archive_bytes:
        raise _too_large(bounds.max_archive_bytes)
    try:
        files = await request.files  # multipart parts over 500 KB spool to disk
    except RequestEntityTooLarge:
        raise _too_large(bounds.max_archive_bytes) from None
    upload = files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "NO_FILE_PROVIDED", "No file in request (form field 'file')")
    kind = archive_kind(upload.filename)
    created = not parent.exists()
    staging = await asyncio.to_thread(staging_dir, parent)
    try:
        tree = staging / "tree"
        tree.mkdir()
        # Read where the parser spooled it: the upload takes its size on disk once.
        stream = cast(BinaryIO, upload.stream)
        await asyncio.to_thread(extract, stream, kind, tree, bounds)
        archive = Archive(kind, await asyncio.to_thread(_read, stream))
        yield Received(flatten_root(tree), archive)
    except BaseException:
        if created:  # leave no empty plugin or app directory behind a refusal
            await asyncio.to_thread(remove_path, staging)
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    finally:
        upload.close()
        await asyncio.to_thread(remove_path, staging)
