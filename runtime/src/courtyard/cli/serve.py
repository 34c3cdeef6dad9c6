"""`courtyard serve`: the runtime, served by granian or Hypercorn (servers/), in one
process or several (`--workers`, servers/supervisor.py); `courtyard dev`: the same in one
process, with a plugin being written, reloaded on every save (watch.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from courtyard_sdk import CourtyardError

from ..settings import CONFIG_FILE, config_file
from .options import read_settings, settings_options

F = TypeVar("F", bound=Callable[..., Any])


def server_options(func: F) -> F:
    """The options of the commands that serve: the settings', bind, logs, --insecure."""
    options = [
        settings_options,
        click.option("--host", help="Address to bind [default: 127.0.0.1]."),
        click.option("--port", type=int, help="Port to bind [default: 8000]."),
        click.option(
            "--server",
            type=click.Choice(["granian", "hypercorn"]),
            help="HTTP server [default: granian]. Env: COURTYARD_SERVER.",
        ),
        click.option(
            "--loop",
            type=click.Choice(["uvloop", "asyncio"]),
            help="Event loop [default: uvloop]. Env: COURTYARD_LOOP.",
        ),
        click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"])
        ),
        click.option("--log-format", type=click.Choice(["text", "json"])),
        click.option(
            "--insecure",
            is_flag=True,
            default=None,
            help="Serve beyond loopback even without API keys or JWT (anyone may then do "
            "anything).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@server_options
@click.option(
    "--workers",
    type=click.IntRange(min=0, max=1024),
    help="Server processes sharing the address [default: 0, auto: one per usable core "
    "beyond loopback, 1 on loopback]. Env: COURTYARD_WORKERS.",
)
def serve(config: str | None, **flags: Any) -> None:
    """Serve the runtime with every plugin found."""
    _run(config, flags, dev=False)


@click.command()
@click.argument(
    "plugin_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@server_options
def dev(plugin_dir: Path, config: str | None, **flags: Any) -> None:
    """Serve the plugin in PLUGIN_DIR (the current directory by default) with the runtime,
    and reload when its files change: a save is served within a second, no request is
    dropped, and a broken save's error is shown in the log and as the answer of the
    plugin's routes until the next good one. Installed plugins under development
    (editable installs) reload too."""
    flags["plugin_dirs"] = (plugin_dir.absolute(), *flags.get("plugin_dirs", ()))
    _run(config, flags, dev=True)


def _run(config: str | None, flags: dict[str, Any], *, dev: bool) -> None:
    from ..logs import configure_logging
    from ..servers.supervisor import worker_count

    settings = read_settings(config, **flags)
    configure_logging(settings.log_level, settings.log_format)
    # Which file was read, said up front: a courtyard.toml beside a plugin project that
    # the server does not read is a common trap.
    path = config_file(config, os.environ)
    logging.getLogger("courtyard.settings").info(
        "configuration: %s",
        path.absolute()
        if path
        else f"no {CONFIG_FILE} in {Path.cwd()} (defaults, COURTYARD_* variables and flags)",
    )
    # `courtyard dev` reloads one process on every save: it always runs one.
    workers = 1 if dev else worker_count(settings)
    try:
        if workers > 1:
            # The supervisor starts the server processes (servers/supervisor.py).
            from ..servers.supervisor import supervise

            supervise(settings, workers)
            return
        # Imported here: the server pulls in Quart and the HTTP servers, which no other
        # command needs.
        from ..server import serve
        from ..servers import run

        run(serve(settings, dev=dev), settings.loop)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None
