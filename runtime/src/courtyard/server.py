"""Serving the Host on Hypercorn, with graceful shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal

from courtyard_sdk import StartupError
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from .host import Host
from .services.exposure import check_before_bind
from .settings import Settings

log = logging.getLogger("courtyard.server")
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def bind_address(host: str, port: int) -> str:
    """Hypercorn's bind string; IPv6 addresses go in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def hypercorn_config(settings: Settings) -> Config:
    """The Hypercorn settings Courtyard serves with."""
    config = Config()
    config.bind = [bind_address(settings.host, settings.port)]
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    config.graceful_timeout = settings.drain_timeout
    return config


def keep_environment_private() -> bool:
    """Make this process non-dumpable (Linux), so that app workers running as the same
    user cannot read its environment (database URLs, keys) from /proc/<pid>/environ.

    :return: whether it took effect.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight requests, run
    shutdown hooks.

    :raises StartupError: when the first generation cannot be built, or when the server
        would listen beyond loopback without authentication (nor `insecure`).
    """
    keep_environment_private()
    await check_before_bind(settings)  # never listen beyond loopback while open
    host = Host(settings)
    stop = asyncio.Event()

    def request_stop() -> None:
        host.begin_shutdown()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    host.on_fatal = stop.set
    log.info("courtyard serving on http://%s", bind_address(settings.host, settings.port))
    await hypercorn_serve(host, hypercorn_config(settings), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    if host.startup_error is not None:
        raise StartupError(str(host.startup_error))
