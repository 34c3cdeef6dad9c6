"""Whether this server process borrows its app workers from its supervisor's pool
(shared_pool.py), and on which connection: set once, before the server starts, by a
process of `courtyard serve --workers N` (servers/supervised.py).

A module of its own so that knowing it imports nothing of the pool: a process serving no
ASGI app never loads the pool's modules.
"""

from __future__ import annotations

_host_fd: int | None = None


def use_host(fd: int | None) -> None:
    """Borrow app workers from the supervisor's pool on the connection `fd` (a Unix stream
    socket); None: a pool of this process's own."""
    global _host_fd
    _host_fd = fd


def host_fd() -> int | None:
    """The connection to the supervisor's pool, if this process borrows from one."""
    return _host_fd
