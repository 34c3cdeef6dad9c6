"""`courtyard dev`: serve with the plugins being written, and reload when their files
change.

A save is picked up within a fraction of a second (watchfiles, debounced so that an editor
writing several files makes one reload). The reload is an ordinary one: requests in
flight finish on the old generation, so none is dropped. A plugin that no longer loads is
reported in the log, and its routes answer `503 PLUGIN_FAILED` with the error (the
dispatcher's `explain_failures`) until the next good save.

Installed plugins whose code is outside the environment's site-packages (editable
installs) are watched too; since Python caches imported modules, the changed plugin's
modules are forgotten before the reload, so that it imports the new code.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from watchfiles import DefaultFilter, awatch

from .dispatcher import Dispatcher
from .generation import BuildError

log = logging.getLogger("courtyard.watch")

DEBOUNCE_MS = 200  # changes this close together make one reload


def watched_roots(dispatcher: Dispatcher) -> list[Path]:
    """The folders of the serving generation's plugins that are being written: directory
    plugins, and installed ones whose code is not in site-packages."""
    generation = dispatcher.current
    if generation is None:
        return []
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    roots = []
    for rec in generation.records:
        root = rec.candidate.root.resolve()
        if not any(root.is_relative_to(folder) for folder in installed):
            roots.append(root)
    return sorted(set(roots))


def forget_modules(dispatcher: Dispatcher, changed: Iterable[Path]) -> None:
    """Drop from `sys.modules` the installed plugins whose files changed, so that the
    reload imports them anew (directory plugins get fresh module names anyway)."""
    generation = dispatcher.current
    if generation is None:
        return
    for rec in generation.records:
        module = rec.candidate.module
        root = rec.candidate.root.resolve()
        if module is None or not any(path.is_relative_to(root) for path in changed):
            continue
        package = module.split(".")[0]
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


async def reload_on_change(dispatcher: Dispatcher, roots: list[Path], stop: asyncio.Event) -> None:
    """Reload `dispatcher` whenever files under `roots` change, until `stop` is set."""
    log.info("watching %s", ", ".join(str(r) for r in roots) or "nothing")
    async for changes in awatch(
        *roots, watch_filter=DefaultFilter(), debounce=DEBOUNCE_MS, stop_event=stop
    ):
        changed = [Path(path).resolve() for _, path in changes]
        log.info("changed: %s; reloading", ", ".join(sorted({p.name for p in changed})))
        forget_modules(dispatcher, changed)
        try:
            await dispatcher.reload()
        except BuildError as exc:  # strict mode: the previous generation serves on
            log.error("reload refused: %s", exc)


__all__ = ["reload_on_change", "watched_roots"]
