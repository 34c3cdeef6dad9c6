"""What a server process does to itself at start (Linux `prctl`): keep its environment
private, and, as one of several server processes, stop when its supervisor dies.

Light on purpose: the supervisor (supervisor.py) uses it without the runtime."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0  # restype: C int
    except (OSError, AttributeError):  # not Linux
        return False


def keep_environment_private() -> bool:
    """Make this process non-dumpable (Linux), so that app workers running as the same
    user cannot read its environment (database URLs, keys) from /proc/<pid>/environ.

    :return: whether it took effect.
    """
    return _prctl(PR_SET_DUMPABLE, 0)


def stop_with_parent(parent: int) -> None:
    """Get SIGTERM (a graceful stop) when the process `parent` ends (Linux), and send it
    to ourselves at once if it already has: a server process never outlives its
    supervisor."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
