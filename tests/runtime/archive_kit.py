"""Building archives for tests (tar.gz and zip, hostile ones included) and looking at trees.

Shared by test_archives.py (courtyard.archives itself) and test_uploads.py (the upload
endpoints): pytest puts this folder on sys.path, so `from archive_kit import ...` works.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

MiB = 1024**2

# -- tar -------------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def tar_file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def tar_dir(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def tar_special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def tar_bytes(members: Iterable[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_flood(count: int) -> bytes:
    """A tar of `count` empty files `f0`, `f1`, ... (hex): one ustar header, renamed and
    re-signed per entry, which is ten times faster than tarfile for 100 000 entries."""
    template = bytearray(tarfile.TarInfo("").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    unsigned = sum(template)
    blocks = []
    for index in range(count):
        name = b"f%x" % index
        header = template.copy()
        header[: len(name)] = name
        header[148:156] = b"%06o\x00 " % (unsigned + sum(name))
        blocks.append(header)
    return b"".join(blocks) + bytes(2 * tarfile.BLOCKSIZE)


def tgz_bytes(members: Iterable[Member]) -> bytes:
    return gzip.compress(tar_bytes(members))


def make_tgz(path: Path, members: Iterable[Member]) -> Path:
    path.write_bytes(tgz_bytes(members))
    return path


# -- zip -------------------------------------------------------------------------------

ZipEntry = tuple[zipfile.ZipInfo | str, bytes]


def zip_entry(name: str, mode: int = 0o100644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def zip_bytes(entries: Iterable[ZipEntry]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we craft
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry, data in entries:
                zf.writestr(entry, data)
    return buffer.getvalue()


def make_zip(path: Path, entries: Iterable[ZipEntry]) -> Path:
    path.write_bytes(zip_bytes(entries))
    return path


def zip_files(path: Path, names: Iterable[str]) -> Path:
    return make_zip(path, [(name, b"" if name.endswith("/") else b"x") for name in names])


def write_zeros_zip(path: Path, name: str, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as out:
        block = bytes(MiB)
        for _ in range(size // MiB):
            out.write(block)
    return path


def patch_zip(data: bytes, name: str, field: str, value: int) -> bytes:
    """Rewrite a header field ("size" or "flags") of entry `name`, in both its headers."""
    out, encoded = bytearray(data), name.encode()
    offsets = {"size": (22, 24, "<I"), "flags": (6, 8, "<H")}[field]
    for signature, field_at, name_len_at, name_at in (
        (b"PK\x03\x04", offsets[0], 26, 30),
        (b"PK\x01\x02", offsets[1], 28, 46),
    ):
        start = out.find(signature)
        while start != -1:
            (length,) = struct.unpack_from("<H", out, start + name_len_at)
            if out[start + name_at : start + name_at + length] == encoded:
                struct.pack_into(offsets[2], out, start + field_at, value)
            start = out.find(signature, start + 4)
    return bytes(out)


# -- looking at trees ------------------------------------------------------------------


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def tree_state(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too, links not followed) with its kind, its
    permission bits and, for a file, the SHA-256 of its content: equal states mean
    byte-for-byte equal trees. The runtime's SQLite database is left out: the audit log
    writes there after every mutating request, failed uploads included."""
    state: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if name.startswith("courtyard.db") and path.parent.name == "data":
                continue
            info = path.lstat()
            mode = f"{stat.S_IMODE(info.st_mode):o}"
            if stat.S_ISLNK(info.st_mode):
                what = f"link -> {os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                what = "dir"
            elif stat.S_ISREG(info.st_mode):
                what = f"file {hashlib.sha256(path.read_bytes()).hexdigest()}"
            else:
                what = f"special {stat.S_IFMT(info.st_mode):o}"
            state[str(path.relative_to(root))] = f"{what} {mode}"
    return state
