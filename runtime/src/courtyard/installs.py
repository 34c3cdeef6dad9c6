"""Changing the served trees on disk so that no reader ever sees half a change.

Plugin and app installs go live with one rename on the same filesystem: the new tree is
prepared in a hidden staging folder beside its destination; what it replaces is renamed
aside first (a backup), and kept until the caller has checked the new tree and accepted
it (`accept_tree`). Discovery skips dot entries, so staging folders and backups are never
served.

The backup is the install's journal: until it is gone, the new tree is not accepted. A
fresh install, with nothing to back up, leaves an empty marker file in its place. So a
crash at any point, even while a new plugin was being checked, leaves at start-up
(`clean_staging`) the tree that was last accepted: an unaccepted new tree is removed and
its backup put back. Accepting first hides the backup with one rename, so a crash in the
middle of deleting it never leaves half a tree to restore.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

STAGING_PREFIX = ".courtyard-staging-"
BACKUP_PREFIX = ".courtyard-old-"  # the tree an unaccepted install replaced
NEW_PREFIX = ".courtyard-new-"  # an empty file: an unaccepted install replaced nothing


def install_tree(source: Path, destination: Path) -> Path:
    """Move the validated folder `source` to `destination` with one rename.

    Missing parents (an `@scope` folder) are created. An existing `destination` is first
    renamed aside to a hidden sibling `.courtyard-old-<uuid>-<name>`; with nothing there,
    an empty file `.courtyard-new-<uuid>-<name>` is made instead. Either is returned: pass
    it to `accept_tree` once the new tree works, or to `restore_tree` to undo. `source`
    must be on the same filesystem (see `staging_dir`). If the move fails, it is undone.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = BACKUP_PREFIX if _exists(destination) else NEW_PREFIX
    journal = destination.parent / f"{prefix}{uuid.uuid4().hex}-{destination.name}"
    if prefix == BACKUP_PREFIX:
        destination.rename(journal)
    else:
        journal.touch(exist_ok=False)
    try:
        source.rename(destination)
    except BaseException:
        restore_tree(journal, destination)
        raise
    return journal


def replaced(journal: Path) -> bool:
    """Whether the install `journal` records replaced a tree (rather than adding one)."""
    return journal.name.startswith(BACKUP_PREFIX)


def accept_tree(journal: Path) -> None:
    """The new tree `install_tree` put in place works: forget what it replaced."""
    remove_path(_hide(journal) if replaced(journal) else journal)


def restore_tree(journal: Path | None, destination: Path) -> None:
    """Undo `install_tree` (`journal` is what it returned), or remove `destination` (None).

    Whatever is at `destination` is renamed to a hidden staging name before it is deleted,
    so readers never see half a tree. When nothing comes back, an emptied `@scope` parent
    goes too.
    """
    if _exists(destination):
        remove_path(_hide(destination))
    if journal is not None and replaced(journal):
        journal.rename(destination)
        return
    if journal is not None:
        journal.unlink(missing_ok=True)
    if destination.parent.name.startswith("@"):
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

    `.courtyard-staging-*` folders are deleted. Every install that was not accepted is
    undone (see the module docstring): a `.courtyard-old-<uuid>-<name>` backup goes back to
    `<name>`, and `<name>` is removed where a `.courtyard-new-<uuid>-<name>` marker says it
    was new.
    """
    if not parent.is_dir():
        return
    scopes = [p for p in parent.iterdir() if p.name.startswith("@") and _is_real_dir(p)]
    for folder in [parent, *sorted(scopes)]:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(STAGING_PREFIX):
                remove_path(entry)
            elif entry.name.startswith((BACKUP_PREFIX, NEW_PREFIX)):
                _undo(entry)


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


def _undo(journal: Path) -> None:
    """Undo the unaccepted install a crash left `journal` of (a malformed name is junk)."""
    prefix = BACKUP_PREFIX if journal.name.startswith(BACKUP_PREFIX) else NEW_PREFIX
    token, _, name = journal.name.removeprefix(prefix).partition("-")
    if len(token) == 32 and name not in ("", ".", ".."):
        restore_tree(journal, journal.parent / name)
    else:
        remove_path(journal)
