"""Serving the dispatcher, on Hypercorn or granian (servers/), with graceful shutdown on
SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from courtyard_sdk import StartupError

from .asgi import ASGIApp
from .dispatcher import Dispatcher
from .limits import RequestLimits
from .proxies import ProxyHeaders, networks
from .redaction import install_log_redaction
from .servers import bind_address, serve_on
from .servers.processes import PR_GET_DUMPABLE, keep_environment_private
from .services.credentials import check_secrets
from .services.exposure import check_before_bind
from .settings import Settings
from .watch import reload_on_change, watched_roots

__all__ = ["PR_GET_DUMPABLE", "bind_address", "keep_environment_private", "serve"]

log = logging.getLogger("courtyard.server")


async def serve(
    settings: Settings,
    *,
    dev: bool = False,
    worker: int | None = None,
    on_ready: Callable[[], object] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight requests, run
    shutdown hooks.

    :param dev: `courtyard dev`: reload when the plugins' files change, and answer a failed
        plugin's routes with its error (watch.py).
    :param worker: this process's index among several server processes sharing the
        address (servers/supervised.py): the supervisor checked the secrets and the
        exposure before binding, and the address is bound with SO_REUSEPORT.
    :param on_ready: called once, when the first generation serves.

    :raises StartupError: when the first generation cannot be built, when the server
        would listen beyond loopback without authentication (nor `insecure`), or when the
        HTTP server cannot serve (the address is taken).
    :raises SettingsError: a plugin credential's secret is too short (nor `insecure`).
    """
    keep_environment_private()
    install_log_redaction()  # no secret sent in a URL reaches the log
    if worker is None:  # else the supervisor checked, once for every process
        check_secrets(settings)  # plugin secrets too short to resist guessing refuse the start
        await check_before_bind(settings)  # never listen beyond loopback while open
    dispatcher = Dispatcher(settings, explain_failures=dev)
    stop = asyncio.Event()

    def request_stop() -> None:
        dispatcher.begin_shutdown()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    dispatcher.on_fatal = stop.set
    log.info(
        "courtyard serving on http://%s (%s, %s event loop)",
        bind_address(settings.host, settings.port),
        settings.server,
        settings.loop,
    )
    # Every HTTP request passes the request limits first (limits.py), once the scheme and
    # client address a trusted proxy forwarded are taken (proxies.py).
    app: ASGIApp = RequestLimits(
        dispatcher, settings, for_app=lambda scope: dispatcher.app_for(scope) is not None
    )
    if settings.trusted_proxies:
        app = ProxyHeaders(app, networks(settings.trusted_proxies))
    watcher = asyncio.create_task(_watch(dispatcher, stop)) if dev else None
    ready = asyncio.create_task(_tell_ready(dispatcher, stop, on_ready)) if on_ready else None
    try:
        await serve_on(settings, app, stop, shared=worker is not None)
    finally:
        for task in (watcher, ready):
            if task is not None:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
    if dispatcher.startup_error is not None:
        raise StartupError(str(dispatcher.startup_error))


async def _watch(dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    """Once the first generation serves, reload on every change of its plugins' files."""
    while dispatcher.current is None and not stop.is_set():  # the server starts it
        await asyncio.sleep(0.05)
    if not stop.is_set():
        await reload_on_change(dispatcher, watched_roots(dispatcher), stop)


async def _tell_ready(
    dispatcher: Dispatcher, stop: asyncio.Event, on_ready: Callable[[], object]
) -> None:
    """Call `on_ready` once the first generation serves (not if the server stops first)."""
    while dispatcher.state == "starting" and not stop.is_set():
        await asyncio.sleep(0.05)
    if dispatcher.state == "ready" and not stop.is_set():
        on_ready()
