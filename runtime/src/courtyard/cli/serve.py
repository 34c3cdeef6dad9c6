"""`courtyard serve`: the runtime, served by Hypercorn."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import click
from courtyard_sdk import CourtyardError

from ..settings import CONFIG_FILE, config_file
from .options import read_settings, settings_options


@click.command()
@settings_options
@click.option("--host", help="Address to bind [default: 127.0.0.1].")
@click.option("--port", type=int, help="Port to bind [default: 8000].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"]))
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Serve beyond loopback even without API keys or JWT (anyone may then do anything).",
)
def serve(config: str | None, **flags: Any) -> None:
    """Serve the runtime with every plugin found."""
    # Imported here: the server pulls in Quart and Hypercorn, which no other command needs.
    from ..logs import configure_logging
    from ..server import serve as run

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
    try:
        asyncio.run(run(settings))
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None
