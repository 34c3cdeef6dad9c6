"""Safely installing uploaded plugin and app archives (.tgz, .tar.gz, .zip).

Threat model: an uploaded archive is hostile. It may try to write outside its folder
(absolute names, `..`, backslashes, drive letters, links), to plant special files (links,
devices, FIFOs, setuid programs), to exhaust disk, memory or CPU (huge uploads, zip and
gzip bombs, headers that lie about sizes, floods of entries or of tar headers), or to
shadow one file with another (duplicates, names equal after Unicode and case folding).
Defences: uploads stream to disk under a cap; every member is validated before a byte is
written; this module, not tarfile or zipfile, writes plain files and folders only, counting
bytes and normalising modes; an install goes live with one rename on the same filesystem.
Every refusal is an `ArchiveError` (an `ApiError`, so routes answer it as JSON) naming the
offending entry. Only the standard library is used: never the system tar or unzip.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

from courtyard_sdk import ApiError

from .installs import remove_path

ArchiveKind = Literal["tar.gz", "zip"]


_CHUNK = 64 * 1024
_MAX_TAR_READ = 1024**2  # one tar header (pax, GNU long name) never needs more
_TAR_OVERHEAD = 8 * 1024  # per entry: header, pax header, long name, padding
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "tar.gz": (b"\x1f\x8b",),
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
}
_DRIVE = re.compile(r"[A-Za-z]:")
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What tarfile, gzip, zlib and zipfile raise on damaged input (RecursionError: tarfile
# reads chained pax headers recursively; zipfile raises NotImplementedError for unknown
# versions or methods). Disk errors (plain OSError) are not among them.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    RecursionError,
    NotImplementedError,
    UnicodeDecodeError,
)


class ArchiveError(ApiError):
    """An archive refused, with an HTTP `status`, a stable `code` and a `message`."""


@dataclass(frozen=True)
class Limits:
    """Caps for one archive. Entries up to `ratio_grace_bytes` are never called bombs."""

    max_archive_bytes: int = 100 * 1024**2  # the upload itself: 413 ARCHIVE_TOO_LARGE
    max_extracted_bytes: int = 500 * 1024**2  # all files together: 413 ARCHIVE_TOO_LARGE
    max_entries: int = 10_000  # 400 TOO_MANY_ENTRIES
    max_ratio: float = 100.0  # expanded / compressed, per zip entry and overall: ARCHIVE_BOMB
    ratio_grace_bytes: int = 1024**2  # small files may compress well: ratio not checked
    max_path_length: int = 255  # UTF-8 bytes of the cleaned path: 400 INVALID_ENTRY
    max_depth: int = 32  # path components: 400 INVALID_ENTRY


@dataclass(frozen=True)
class _Entry:
    """One validated member: where it goes, what it is and the archive's own handle."""

    name: str
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    mode: int
    member: tarfile.TarInfo | zipfile.ZipInfo


def archive_kind(filename: str) -> ArchiveKind:
    """The archive kind an upload's file name announces: "tar.gz" or "zip"."""
    name = filename.lower()
    if name.endswith((".tgz", ".tar.gz")):
        return "tar.gz"
    if name.endswith(".zip"):
        return "zip"
    raise ArchiveError(400, "INVALID_FILE_TYPE", "File must be .tgz, .tar.gz, or .zip")


def extract(archive: Path | BinaryIO, kind: str, target: Path, limits: Limits) -> None:
    """Validate every member of `archive` (a file, or a seekable binary file object such
    as an upload's spooled body, read in place), then write them all into `target`.

    `target` must be an existing, empty folder; on any failure it is left empty. Only
    plain files (mode 0o644, or 0o755 if any execute bit was set) and folders (0o755) are
    created; a leading "./" is ignored. Sizes are checked from the headers first and then
    counted again while writing, so a header that lies cannot slip past the limits.

    Refusals: 400 INVALID_FILE_TYPE (content is not `kind`), PATH_TRAVERSAL, UNSAFE_ENTRY,
    DUPLICATE_ENTRY, INVALID_ENTRY, TOO_MANY_ENTRIES, ARCHIVE_BOMB, CORRUPT_ARCHIVE; 413
    ARCHIVE_TOO_LARGE. A ValueError means the caller passed a non-empty `target`.
    """
    if any(target.iterdir()):
        raise ValueError(f"extraction target {target} is not empty")
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(archive.open("rb")) if isinstance(archive, Path) else archive
        _extract(raw, kind, target, limits)


def _extract(raw: BinaryIO, kind: str, target: Path, limits: Limits) -> None:
    """`extract`, from an open file."""
    size = raw.seek(0, os.SEEK_END)
    if size > limits.max_archive_bytes:
        raise ArchiveError(
            413,
            "ARCHIVE_TOO_LARGE",
            f"Archive exceeds the limit of {limits.max_archive_bytes} bytes",
        )
    raw.seek(0)
    _check_magic(raw.read(4), kind)
    raw.seek(0)
    try:
        if kind == "zip":
            with zipfile.ZipFile(raw) as zf:
                _write_entries(_zip_entries(zf, size, limits), zf.open, target, limits)
        else:
            budget = limits.max_extracted_bytes + (limits.max_entries + 2) * _TAR_OVERHEAD
            with (
                gzip.GzipFile(fileobj=raw, mode="rb") as gz,
                tarfile.open(fileobj=_bounded(gz, budget), mode="r:", encoding="utf-8") as tar,
            ):
                entries = _tar_entries(tar, size, target, limits)
                _write_entries(entries, tar.extractfile, target, limits)
    except _READ_ERRORS as exc:
        _empty(target)
        raise ArchiveError(400, "CORRUPT_ARCHIVE", f"Archive is damaged: {exc}") from exc
    except BaseException:
        _empty(target)
        raise


def flatten_root(target: Path) -> Path:
    """The folder holding the archive's content (npm pack nests it in one top folder).

    Returns the only entry of `target` if it is a folder (such as "package/"), else
    `target` itself.
    """
    entries = list(itertools.islice(target.iterdir(), 2))
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


# -- validation ------------------------------------------------------------------------


def _check_magic(head: bytes, kind: str) -> None:
    """Refuse content that does not start (`head`) like the announced kind of archive."""
    if kind not in _MAGIC:
        raise ArchiveError(400, "INVALID_FILE_TYPE", f"Unknown archive kind {kind!r}")
    if not head.startswith(_MAGIC[kind]):
        raise ArchiveError(400, "INVALID_FILE_TYPE", f"File content is not a {kind} archive")


def _show(name: str) -> str:
    """A member name made safe and short for an error message."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _fold(path: str) -> str:
    """The key two paths share if a filesystem could take them for the same file."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def _clean_parts(name: str, limits: Limits) -> tuple[str, ...]:
    """The path components of member `name`, or an ArchiveError if the name is unsafe."""

    def refuse(code: str, why: str) -> ArchiveError:
        return ArchiveError(400, code, f"Entry {_show(name)} {why}")

    if any(unicodedata.category(char) == "Cc" for char in name):
        raise refuse("PATH_TRAVERSAL", "has a NUL or control character in its name")
    if "\\" in name:
        raise refuse("PATH_TRAVERSAL", "has a backslash in its name")
    if name.startswith("/"):
        raise refuse("PATH_TRAVERSAL", "is an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise refuse("PATH_TRAVERSAL", "has a '..' component")
    if parts and _DRIVE.match(parts[0]):
        raise refuse("PATH_TRAVERSAL", "starts with a drive letter")
    try:
        length = len("/".join(parts).encode("utf-8"))
    except UnicodeEncodeError:
        raise refuse("INVALID_ENTRY", "has a name that is not valid UTF-8") from None
    if length > limits.max_path_length:
        raise refuse("INVALID_ENTRY", f"has a path longer than {limits.max_path_length} bytes")
    if len(parts) > limits.max_depth:
        raise refuse("INVALID_ENTRY", f"is nested deeper than {limits.max_depth} levels")
    return parts


class _Validator:
    """The checks both formats share, applied member by member as they are listed."""

    def __init__(self, archive_size: int, limits: Limits) -> None:
        self.archive_size = archive_size
        self.limits = limits
        self.entries: list[_Entry] = []
        self.total = 0
        self.count = 0
        self.seen: dict[str, tuple[bool, str]] = {}  # folded path -> (is_dir, name)
        self.folders: dict[str, str] = {}  # folded path -> name of an entry inside it

    def add(
        self,
        name: str,
        is_dir: bool,
        size: int,
        mode: int,
        member: tarfile.TarInfo | zipfile.ZipInfo,
    ) -> None:
        """Check one member and keep it for extraction."""
        self.count += 1
        if self.count > self.limits.max_entries:
            raise ArchiveError(
                400,
                "TOO_MANY_ENTRIES",
                f"Archive has more than {self.limits.max_entries} entries (at entry {_show(name)})",
            )
        parts = _clean_parts(name, self.limits)
        if not parts:
            if is_dir:  # "./" itself
                return
            raise ArchiveError(400, "INVALID_ENTRY", f"Entry {_show(name)} has no file name")
        self._check_unique(name, parts, is_dir)
        if not is_dir:
            self.total += size
            self._check_total(name)
        mode = 0o755 if is_dir or mode & 0o111 else 0o644
        self.entries.append(_Entry(name, parts, is_dir, 0 if is_dir else size, mode, member))

    def _check_unique(self, name: str, parts: tuple[str, ...], is_dir: bool) -> None:
        """Refuse a path met before, and a path that is both a file and a folder."""
        for depth in range(1, len(parts)):
            key = _fold("/".join(parts[:depth]))
            if key in self.seen and not self.seen[key][0]:
                raise ArchiveError(
                    400,
                    "DUPLICATE_ENTRY",
                    f"Entry {_show(name)} is inside {_show(self.seen[key][1])}, a file",
                )
            self.folders.setdefault(key, name)
        key = _fold("/".join(parts))
        if key in self.seen:
            other = self.seen[key][1]
            why = "appears twice" if other == name else f"is the same path as {_show(other)}"
            raise ArchiveError(400, "DUPLICATE_ENTRY", f"Entry {_show(name)} {why}")
        if not is_dir and key in self.folders:
            raise ArchiveError(
                400,
                "DUPLICATE_ENTRY",
                f"Entry {_show(name)} is a file but {_show(self.folders[key])} is inside it",
            )
        self.seen[key] = (is_dir, name)

    def _check_total(self, name: str) -> None:
        """Refuse once the declared sizes add up to too much, or to a bomb's ratio."""
        limits = self.limits
        if self.total > limits.max_extracted_bytes:
            raise ArchiveError(
                413,
                "ARCHIVE_TOO_LARGE",
                f"Extracted size exceeds the limit of {limits.max_extracted_bytes} bytes "
                f"(at entry {_show(name)})",
            )
        if self.total > limits.ratio_grace_bytes and (
            self.total > self.archive_size * limits.max_ratio
        ):
            raise ArchiveError(
                400,
                "ARCHIVE_BOMB",
                f"Archive expands to more than {limits.max_ratio:g} times its size "
                f"(at entry {_show(name)})",
            )


def _tar_entries(
    tar: tarfile.TarFile, archive_size: int, target: Path, limits: Limits
) -> list[_Entry]:
    """Validate the members of a tar, each as soon as its header is read."""
    check = _Validator(archive_size, limits)
    for member in tar:
        if not (member.isreg() or member.isdir()):
            if member.issym() or member.islnk():
                what = "a link"
            elif member.ischr() or member.isblk():
                what = "a device"
            elif member.isfifo():
                what = "a FIFO"
            else:
                what = f"of unsupported type {member.type!r}"
            raise ArchiveError(400, "UNSAFE_ENTRY", f"Entry {_show(member.name)} is {what}")
        check.add(member.name, member.isdir(), member.size, member.mode, member)
        _data_filter(member, target)
    return check.entries


def _data_filter(member: tarfile.TarInfo, target: Path) -> None:
    """Also ask tarfile's own `data` filter (Python 3.11.4+), as a second opinion."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, str(target))
    except tarfile.TarError as exc:  # FilterError, also missing before 3.11.4
        raise ArchiveError(
            400, "UNSAFE_ENTRY", f"Entry {_show(member.name)} refused by tarfile: {exc}"
        ) from exc


def _zip_entries(zf: zipfile.ZipFile, archive_size: int, limits: Limits) -> list[_Entry]:
    """Validate the members of a zip from its central directory."""
    check = _Validator(archive_size, limits)
    for info in zf.infolist():
        name = info.orig_filename  # zipfile cuts `filename` at a NUL; this is the raw name
        mode = info.external_attr >> 16
        is_dir = name.endswith("/") or stat.S_ISDIR(mode)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            what = "a link" if stat.S_ISLNK(mode) else "a special file"
            raise ArchiveError(400, "UNSAFE_ENTRY", f"Entry {_show(name)} is {what}")
        if info.flag_bits & 0x1:
            raise ArchiveError(400, "INVALID_ENTRY", f"Entry {_show(name)} is encrypted")
        if info.compress_type not in _ZIP_METHODS:
            raise ArchiveError(
                400, "INVALID_ENTRY", f"Entry {_show(name)} uses an unsupported compression"
            )
        if not 0 <= info.header_offset < archive_size or info.compress_size > archive_size:
            raise ArchiveError(
                400, "CORRUPT_ARCHIVE", f"Entry {_show(name)} points outside the archive"
            )
        if not is_dir:
            _check_zip_ratio(info, name, limits)
        check.add(name, is_dir, info.file_size, mode, info)
    return check.entries


def _check_zip_ratio(info: zipfile.ZipInfo, name: str, limits: Limits) -> None:
    """Refuse one zip entry that expands too much."""
    size, packed = info.file_size, info.compress_size
    if size > limits.ratio_grace_bytes and size > packed * limits.max_ratio:
        raise ArchiveError(
            400,
            "ARCHIVE_BOMB",
            f"Entry {_show(name)} expands from {packed} to {size} bytes, "
            f"more than {limits.max_ratio:g} times",
        )


def _bounded(inner: gzip.GzipFile, budget: int) -> IO[bytes]:
    """`inner` behind a `_BoundedStream`, typed as the file object tarfile expects."""
    return cast("IO[bytes]", _BoundedStream(inner, budget))


class _BoundedStream:
    """The decompressed tar stream, which may not grow past `budget` bytes.

    tarfile reads pax and GNU long-name headers whole, and skips data by seeking, which
    in a gzip stream means decompressing: this caps the memory and work a header costs.
    """

    def __init__(self, inner: gzip.GzipFile, budget: int) -> None:
        self._inner = inner
        self._budget = budget

    def _claim(self, end: int) -> None:
        if end > self._budget:
            raise ArchiveError(
                413, "ARCHIVE_TOO_LARGE", f"Archive expands beyond {self._budget} bytes"
            )

    def read(self, size: int = -1) -> bytes:
        """Read `size` bytes; refuse an unbounded or header-sized-beyond-reason read."""
        if not 0 <= size <= _MAX_TAR_READ:
            raise ArchiveError(400, "INVALID_ENTRY", "Archive has an oversized tar header")
        self._claim(self._inner.tell() + size)
        return self._inner.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek to an absolute position within the budget."""
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        self._claim(offset)
        return self._inner.seek(offset)

    def tell(self) -> int:
        """The position in the decompressed stream."""
        return self._inner.tell()


# -- writing ---------------------------------------------------------------------------


def _write_entries(
    entries: list[_Entry],
    open_member: Callable[[Any], IO[bytes] | None],
    target: Path,
    limits: Limits,
) -> None:
    """Create the validated entries under `target`, in archive order."""
    remaining = limits.max_extracted_bytes
    for entry in entries:
        if entry.is_dir:
            _make_dirs(target, entry.parts)
        else:
            folder = _make_dirs(target, entry.parts[:-1])
            remaining -= _write_file(entry, open_member, folder / entry.parts[-1], remaining)


def _make_dirs(target: Path, parts: Iterable[str]) -> Path:
    """Create the folders `parts` below `target` (0o755) and return the deepest."""
    folder = target
    for part in parts:
        folder = folder / part
        if not folder.is_dir():
            folder.mkdir()
            folder.chmod(0o755)
    return folder


def _write_file(
    entry: _Entry, open_member: Callable[[Any], IO[bytes] | None], path: Path, remaining: int
) -> int:
    """Copy one member to a new file at `path`, counting its bytes; return how many."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            source = open_member(entry.member)
            if source is None:
                raise ArchiveError(400, "CORRUPT_ARCHIVE", f"Entry {_show(entry.name)} has no data")
            with source:
                while chunk := source.read(_CHUNK):
                    written += len(chunk)
                    if written > entry.size:
                        raise ArchiveError(
                            400,
                            "CORRUPT_ARCHIVE",
                            f"Entry {_show(entry.name)} holds more data than its header says",
                        )
                    if written > remaining:
                        raise ArchiveError(
                            413,
                            "ARCHIVE_TOO_LARGE",
                            f"Extracted size exceeds the limit (at entry {_show(entry.name)})",
                        )
                    out.write(chunk)
        except _READ_ERRORS as exc:
            raise ArchiveError(
                400, "CORRUPT_ARCHIVE", f"Entry {_show(entry.name)} is damaged: {exc}"
            ) from exc
    if written != entry.size:
        raise ArchiveError(
            400,
            "CORRUPT_ARCHIVE",
            f"Entry {_show(entry.name)} holds {written} bytes, its header says {entry.size}",
        )
    path.chmod(entry.mode)
    return written


def _empty(target: Path) -> None:
    """Delete everything inside `target`, keeping `target`."""
    for child in target.iterdir():
        remove_path(child)
