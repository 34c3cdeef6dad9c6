"""The artifact folders: one per project, `<data_dir>/artifacts/<project id>/`.

Listing skips the repositories' `.git` folders (git's own files, hooks included, are not
artifacts); a download path is resolved inside the project's folder and refused when it
leaves it by any means (`..`, an absolute path, a symbolic link, a NUL, a backslash).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from courtyard_sdk import ApiError

GIT = ".git"


def bad_path(path: str) -> ApiError:
    """400 INVALID_PATH."""
    return ApiError(400, "INVALID_PATH", "the artifact path must stay inside the project's folder")


class Artifacts:
    """The artifact folders under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, project_id: str) -> Path:
        """The project's folder (not created)."""
        return self.root / project_id

    def files(self, project_id: str) -> list[str]:
        """Every artifact of the project: sorted relative paths with `/`."""
        base = self.folder(project_id)
        if not base.is_dir():
            return []
        found: list[str] = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != GIT and not (Path(folder) / d).is_symlink())
            for name in names:
                full = Path(folder) / name
                if full.is_file() and not full.is_symlink():
                    found.append(full.relative_to(base).as_posix())
        return sorted(found)

    def resolve(self, project_id: str, path: str) -> Path:
        """The file `path` names inside the project's folder.

        :raises ApiError: 400 INVALID_PATH for a path that leaves the folder or enters a
            `.git` folder, 404 ARTIFACT_NOT_FOUND for a path that names no file.
        """
        parts = path.split("/")
        if (
            not path
            or "\x00" in path
            or "\\" in path
            or path.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
            or GIT in parts
        ):
            raise bad_path(path)
        base = self.folder(project_id).resolve()
        target = base.joinpath(*parts)
        try:
            real = target.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise ApiError(404, "ARTIFACT_NOT_FOUND", f"no artifact {path!r}") from None
        except (OSError, RuntimeError):  # a loop of links, a name too long
            raise bad_path(path) from None
        if real == base or base not in real.parents or target.is_symlink():
            raise bad_path(path)
        if not real.is_file():
            raise ApiError(404, "ARTIFACT_NOT_FOUND", f"no artifact {path!r}")
        return real

    def remove(self, project_id: str) -> None:
        """Delete the project's folder, repositories included."""
        shutil.rmtree(self.folder(project_id), ignore_errors=True)
