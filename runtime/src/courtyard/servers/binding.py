"""The address a server binds, as servers print it; the sockets several server
processes share (`courtyard serve --workers N`)."""

from __future__ import annotations

import socket


def bind_address(host: str, port: int) -> str:
    """`host:port` as servers print and Hypercorn binds it; IPv6 addresses go in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _socket_for(host: str, port: int) -> tuple[socket.socket, tuple[object, ...]]:
    """A TCP socket of the family of `host`, and the address to bind it to."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    # As the servers do: a restart binds at once, whatever connections linger in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock, address


def hold_address(host: str, port: int) -> socket.socket:
    """Bind `host:port` for several server processes (servers/supervisor.py), without
    listening: refused when a server listens there (it is bound without SO_REUSEPORT,
    so even a server sharing its port with SO_REUSEPORT is found); then SO_REUSEPORT is
    set, so that the processes' own listening sockets bind beside it (only sockets of
    the same user may). Held for the supervisor's life; not listening, it never takes a
    connection. (SO_REUSEADDR, which lets a restart bind over connections lingering in
    TIME_WAIT, also lets another socket that is bound but not listening yet, such as a
    second supervisor's in the moment before its processes listen, go unnoticed.)

    :raises OSError: the address is taken or not this machine's.
    """
    sock, address = _socket_for(host, port)
    try:
        sock.bind(address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        sock.close()
        raise
    return sock


def shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, not listening yet: one server
    process's share of the address (the kernel spreads connections over the processes).

    :raises OSError: the address cannot be bound.
    """
    sock, address = _socket_for(host, port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
