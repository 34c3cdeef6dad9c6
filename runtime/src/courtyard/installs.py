"""Changing the served trees on disk so that no reader ever sees half a change."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

TRASH_PREFIX = ".courtyard-trash-"


def remove_tree(path: Path) -> None:
    """Remove a folder atomically as far as readers go: one rename, then delete.

    Discovery skips dot entries, so the renamed folder is invisible at once; an emptied
    `@scope` folder is removed too.
    """
    trash = path.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    if path.parent.name.startswith("@") and not any(path.parent.iterdir()):
        path.parent.rmdir()


def clean_leftovers(folder: Path) -> None:
    """Delete trash left by a removal that a crash interrupted."""
    if not folder.is_dir():
        return
    for entry in [*folder.glob(f"{TRASH_PREFIX}*"), *folder.glob(f"@*/{TRASH_PREFIX}*")]:
        shutil.rmtree(entry, ignore_errors=True)
