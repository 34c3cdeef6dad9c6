"""Changing the served trees on disk so that no reader ever sees half a change.

Plugin and app installs go live with one rename on the same filesystem: the new tree is
prepared in a hidden staging folder beside its destination; what it replaces is renamed
aside first and kept until the caller knows the new tree works. Discovery skips dot
entries, so staging folders and backups are never served. A crash at any point leaves
either the old tree or the new one; `clean_staging` settles the rest at start-up.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

STAGING_PREFIX = ".courtyard-staging-"
BACKUP_PREFIX = ".courtyard-old-"


def install_tree(source: Path, destination: Path) -> Path | None:
    """Move the validated folder `source` to `destination` with one rename.

    Missing parents (an `@scope` folder) are created. An existing `destination` is first
    renamed aside to a hidden sibling `.courtyard-old-<uuid>-<name>`, whose path is
    returned: the caller deletes it once the new tree works, or passes it to
    `restore_tree`. Returns None when nothing was replaced. `source` must be on the same
    filesystem (see `staging_dir`). If the second rename fails, the backup is put back.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if _exists(destination):
        backup = destination.parent / f"{BACKUP_PREFIX}{uuid.uuid4().hex}-{destination.name}"
        destination.rename(backup)
    try:
        source.rename(destination)
    except BaseException:
        if backup is not None:
            backup.rename(destination)
        raise
    return backup


def restore_tree(backup: Path | None, destination: Path) -> None:
    """Undo `install_tree`: put `backup` back at `destination`, or remove `destination`.

    Whatever is at `destination` is renamed to a hidden staging name before it is deleted,
    so readers never see half a tree. With no backup, an emptied `@scope` parent goes too.
    """
    if _exists(destination):
        remove_path(_hide(destination))
    if backup is not None:
        backup.rename(destination)
    elif destination.parent.name.startswith("@"):
        with contextlib.suppress(OSError):
            destination.parent.rmdir()


def staging_dir(parent: Path) -> Path:
    """Create and return a fresh hidden folder `.courtyard-staging-<uuid>` in `parent`.

    Being inside `parent`, it is on the same filesystem as the install destination, so
    `install_tree` can move its content into place with an atomic rename. The caller
    removes it when done (it may still exist, empty, after a flattened install).
    """
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    path.mkdir()
    path.chmod(0o755)
    return path


def clean_staging(parent: Path) -> None:
    """Settle what a crash left in `parent` and its `@scope` folders (call at start-up).

    `.courtyard-staging-*` folders are deleted. A `.courtyard-old-<uuid>-<name>` backup is
    renamed back to `<name>` when `<name>` is missing (the crash came mid-swap, between
    the two renames of `install_tree` or `restore_tree`), and deleted otherwise (the new
    tree was already in place, so the install is kept even if its caller meant to undo it).
    """
    if not parent.is_dir():
        return
    scopes = [p for p in parent.iterdir() if p.name.startswith("@") and _is_real_dir(p)]
    for folder in [parent, *sorted(scopes)]:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(STAGING_PREFIX):
                remove_path(entry)
            elif entry.name.startswith(BACKUP_PREFIX):
                _settle_backup(entry)


def remove_tree(path: Path) -> None:
    """Remove an installed tree: hidden by one rename, then deleted (an emptied `@scope`
    parent goes too)."""
    restore_tree(None, path)


def remove_path(path: Path) -> None:
    """Delete a folder tree, a file or a link."""
    if _is_real_dir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    """Whether anything, even a dangling link, is at `path`."""
    return path.exists() or path.is_symlink()


def _is_real_dir(path: Path) -> bool:
    """A folder, not a link to one."""
    return path.is_dir() and not path.is_symlink()


def _hide(path: Path) -> Path:
    """Rename `path` to a hidden staging name (deleted by `clean_staging`), return it."""
    hidden = path.parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    path.rename(hidden)
    return hidden


def _settle_backup(backup: Path) -> None:
    """Restore a crash's backup if its destination is missing, else delete it."""
    rest = backup.name.removeprefix(BACKUP_PREFIX)
    token, _, name = rest.partition("-")
    destination = backup.parent / name
    if len(token) == 32 and name not in ("", ".", "..") and not _exists(destination):
        backup.rename(destination)
    else:
        remove_path(backup)
