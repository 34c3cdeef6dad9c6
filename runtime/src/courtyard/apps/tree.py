"""A worker's process tree as /proc shows it: every process it started, their resident
memory, and ending them all.

A worker is a child subreaper (worker_main.py): what its app starts stays in its tree
while the worker lives, even detached (a new session, a double fork), instead of being
adopted by init. So whoever ends a worker (the worker itself on its way out, or the pool)
can find everything the app left running, and kill it.

Standard library only: worker_main.py loads this file by path, before the app, without
importing the runtime.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """`pid`'s child processes (from each of its threads' `children` list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += map(int, Path(task.path, "children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """`pid`'s children, their children, and so on (parents before their children)."""
    found: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children(child)
    return found


def resident_bytes(pid: int) -> int:
    """The resident memory of `pid` and of every process it started (shared pages are
    counted once per process, as `ps` does)."""
    total = 0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * _PAGE
    return total


def kill_descendants(pid: int) -> None:
    """SIGKILL every process `pid` started. They are stopped first, so that none forks
    away while the others are being killed, then killed together."""
    stopped: list[int] = []
    for _ in range(3):  # what forked between the listing and its stop is found next round
        fresh = [child for child in descendants(pid) if child not in stopped]
        if not fresh:
            break
        for child in fresh:
            _signal(child, signal.SIGSTOP)
        stopped += fresh
    for child in stopped:
        _signal(child, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


__all__ = ["children", "descendants", "kill_descendants", "resident_bytes"]
