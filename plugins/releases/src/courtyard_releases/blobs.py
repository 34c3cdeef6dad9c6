"""Content-addressed storage of app archives: `<data_dir>/blobs/sha256/<hex>`."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 16
MAGIC = {"tgz": b"\x1f\x8b", "zip": b"PK\x03\x04"}


def archive_format(filename: str, head: bytes) -> str | None:
    """`tgz` or `zip` when the name and the first bytes agree, else None."""
    name = filename.lower()
    kind = "zip" if name.endswith(".zip") else "tgz" if name.endswith((".tgz", ".tar.gz")) else None
    if kind is None or not head.startswith(MAGIC[kind]):
        return None
    return kind


class BlobStore:
    """Archives stored by their sha256; writing the same bytes twice keeps one copy."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        """The file of `sha256:<hex>`."""
        hexdigest = digest.removeprefix("sha256:")
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise ValueError("not a sha256 digest")
        return self.root / hexdigest

    def put(self, stream: BinaryIO) -> tuple[str, int]:
        """Store `stream`; returns (`sha256:<hex>`, size). Written to a temporary file
        first and renamed into place, so a reader never sees half an archive."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            name = f"sha256:{digest.hexdigest()}"
            os.replace(temporary, self.path(name))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return name, size
