"""`courtyard plugins pack` and `courtyard apps pack`: a plugin or app folder packed into
the .tgz archive `POST /api/*/upload` accepts (and that `upload` sends for a folder).

The manifest is checked first, with the code the server runs on an upload (`read_manifest`
for `plugin.toml`, `read_app_manifest` for `package.json` or `app.toml`). The archive holds
plain files only, under `package/` (as `npm pack` makes), with modes 0644 or 0755, sorted
and with a fixed timestamp so that the same folder always packs to the same bytes.
Symbolic links and special files are refused; caches, VCS folders, virtualenvs and dot
files (which may hold secrets such as `.env`) are left out.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click

from .errors import CommandError, reported
from .options import json_option
from .output import print_json

Kind = Literal["plugin", "app"]

ROOT = "package"  # the archive's one top folder; the server flattens it away
MTIME = 499162500  # 1985-10-26T08:15:00Z, npm's: reproducible archives
SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
SKIP_SUFFIXES = (".pyc", ".pyo")
HIDDEN_KEPT = frozenset({".well-known"})  # dot names a site may need to serve
_ARCHIVE_VERSION = r"[0-9][0-9A-Za-z.+_-]*"


class PackError(CommandError):
    """A folder that cannot be packed; `code` is the server's code for the same problem."""


@dataclass(frozen=True)
class Packed:
    """An archive written by `pack`."""

    kind: Kind
    name: str
    version: str
    path: Path
    files: int
    size: int


def read_folder_manifest(folder: Path, kind: Kind) -> tuple[str, str]:
    """The `(name, version)` a plugin or app folder declares, checked as the server would.

    :raises PackError: INVALID_MANIFEST (PATH_TRAVERSAL for an invalid app name).
    """
    if kind == "plugin":
        from courtyard_sdk import ManifestError, read_manifest

        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            raise PackError("INVALID_MANIFEST", str(exc)) from None
        return manifest.name, manifest.version
    from ..apps.registry import AppManifestError, InvalidAppName, read_app_manifest

    try:
        name, version, _ = read_app_manifest(folder)
    except InvalidAppName as exc:
        raise PackError("PATH_TRAVERSAL", f"{folder}: {exc}") from None
    except AppManifestError as exc:
        raise PackError("INVALID_MANIFEST", f"{folder}: {exc}") from None
    return name, version


def archive_stem(name: str) -> str:
    """`@acme/hello` -> `acme-hello`: a package name made a safe file name, as npm does."""
    return name.removeprefix("@").replace("/", "-")


def archive_name(name: str, version: str) -> str:
    """The default archive file name: `acme-hello-1.0.0.tgz`."""
    return f"{archive_stem(name)}-{version}.tgz"


def _skipped(entry: os.DirEntry[str], top: bool, stem: str) -> bool:
    """Whether a folder entry stays out of the archive."""
    name = entry.name
    if name.startswith(".") and name not in HIDDEN_KEPT:
        return True  # .git, .venv, .env, editor and tool caches
    if name in SKIP_DIRS:
        return True
    if entry.is_dir(follow_symlinks=False):  # a virtualenv, whatever its name
        return os.path.isfile(os.path.join(entry.path, "pyvenv.cfg"))
    if name.endswith(SKIP_SUFFIXES):
        return True
    # An earlier `pack` of this folder into itself (the default when run inside it).
    return top and re.fullmatch(rf"{re.escape(stem)}-{_ARCHIVE_VERSION}\.tgz", name) is not None


def _check_name(rel: str) -> None:
    """Refuse a file name the server would refuse, before any byte is written."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise PackError("PACK_FAILED", f"{rel!r}: the file name is not valid UTF-8") from None
    if "\\" in rel or any(unicodedata.category(char) == "Cc" for char in rel):
        raise PackError(
            "PACK_FAILED", f"{rel!r}: backslashes and control characters cannot be in names"
        )


def collect_files(folder: Path, stem: str, exclude: frozenset[Path] = frozenset()) -> list[str]:
    """The paths (relative, with `/`) of the files to pack, sorted.

    :raises PackError: PACK_FAILED for a symbolic link, a special file, an unusable name or
        two names a case-insensitive filesystem would take for one.
    """
    found: list[str] = []
    folded: dict[str, str] = {}

    def walk(path: str, prefix: str) -> Iterator[str]:
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = prefix + entry.name
                if _skipped(entry, top=not prefix, stem=stem):
                    continue
                if entry.is_symlink():
                    raise PackError(
                        "PACK_FAILED",
                        f"{rel} is a symbolic link: archives hold plain files only "
                        "(replace it with a copy of what it points to)",
                    )
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(entry.path, rel + "/")
                elif entry.is_file(follow_symlinks=False):
                    if Path(entry.path).resolve() not in exclude:  # the archive itself
                        yield rel
                else:
                    raise PackError(
                        "PACK_FAILED", f"{rel} is not a regular file (a FIFO, socket or device)"
                    )

    for rel in walk(str(folder), ""):
        _check_name(rel)
        key = unicodedata.normalize("NFC", unicodedata.normalize("NFC", rel).casefold())
        if key in folded:
            raise PackError(
                "PACK_FAILED", f"{rel} and {folded[key]} differ only in case or Unicode form"
            )
        folded[key] = rel
        found.append(rel)
    return found


def _output_path(output: Path | None, name: str, version: str) -> Path:
    """Where the archive goes: `output`, a file in `output` if it is a folder, or the cwd."""
    default = archive_name(name, version)
    if output is None:
        return Path.cwd() / default
    if output.is_dir():
        return output / default
    if not output.name.lower().endswith((".tgz", ".tar.gz")):
        raise PackError("PACK_FAILED", f"{output}: the archive's name must end in .tgz or .tar.gz")
    if not output.parent.is_dir():
        raise PackError("PACK_FAILED", f"{output.parent} is not a folder")
    return output


def _add_file(tar: tarfile.TarFile, folder: Path, rel: str) -> None:
    """Add one file, opened without following links and measured from its descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(folder / rel, flags)
    except OSError as exc:
        raise PackError("PACK_FAILED", f"{rel}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PackError("PACK_FAILED", f"{rel} is no longer a regular file")
        member = tarfile.TarInfo(f"{ROOT}/{rel}")
        member.size = info.st_size
        member.mode = 0o755 if info.st_mode & 0o111 else 0o644
        member.mtime = MTIME
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        try:
            tar.addfile(member, source)  # copies in chunks: never the whole file in memory
        except OSError as exc:  # the file shrank while being packed, or a read failed
            raise PackError("PACK_FAILED", f"{rel}: {exc}") from None


def pack(folder: Path, kind: Kind, output: Path | None = None) -> Packed:
    """Check `folder`'s manifest, then write its files to a .tgz the runtime accepts.

    :param output: the archive's path, or a folder for it; by default
        `<cwd>/<name without @, / as ->-<version>.tgz`. It is written under a temporary
        name and renamed, so a failure leaves no partial archive.
    :raises PackError: with the server's code for the same problem where it has one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PackError("PACK_FAILED", f"{folder} is not a folder")
    name, version = read_folder_manifest(folder, kind)
    target = _output_path(output, name, version).absolute()
    try:
        files = collect_files(folder, archive_stem(name), frozenset({target.resolve()}))
    except OSError as exc:
        raise PackError("PACK_FAILED", f"{exc.filename or folder}: {exc.strerror or exc}") from None
    try:
        handle, part = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as exc:
        raise PackError("PACK_FAILED", f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with (
            os.fdopen(handle, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
        ):
            for rel in files:
                _add_file(tar, folder, rel)
        os.chmod(part, 0o644)
        os.replace(part, target)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return Packed(kind, name, version, target, len(files), target.stat().st_size)


def summary(packed: Packed) -> str:
    """`12 files, 3.4 kB`."""
    from rich.filesize import decimal

    return f"{packed.files} files, {decimal(packed.size)}"


def pack_command(kind: Kind) -> click.Command:
    """The `pack` command of the `plugins` or `apps` group."""
    manifest = "plugin.toml" if kind == "plugin" else "package.json or app.toml"

    @click.command(
        "pack",
        short_help=f"Pack a {kind} folder into a .tgz the runtime accepts.",
        help=f"Pack the {kind} in DIR into a .tgz the runtime accepts, its manifest "
        f"({manifest}) checked first as the server checks it. Dot files (but .well-known), "
        "__pycache__, node_modules, virtualenvs and *.pyc are left out; symbolic links are "
        "refused.",
    )
    @click.argument(
        "folder", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
    )
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        help="The archive's path, or a folder for it [default: ./<name>-<version>.tgz].",
    )
    @json_option
    @reported
    def command(folder: Path, output: Path | None, as_json: bool) -> None:
        packed = pack(folder, kind, output)
        if as_json:
            print_json(
                {
                    "name": packed.name,
                    "version": packed.version,
                    "path": str(packed.path),
                    "files": packed.files,
                    "bytes": packed.size,
                }
            )
            return
        click.echo(f"packed {packed.name} {packed.version}: {summary(packed)} -> {packed.path}")

    return command
