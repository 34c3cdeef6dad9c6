"""The `courtyard` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from courtyard_sdk import CourtyardError

from . import __version__
from .cli_audit import audit
from .cli_keys import keys
from .remote import add_remote_commands, remote_options
from .scaffold import new
from .settings import Settings, load_settings


def _settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that reads settings shares."""
    options = [
        click.option("--config", type=click.Path(dir_okay=False), help="Config file (TOML)."),
        click.option(
            "--plugin-dir",
            "plugin_dirs",
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="A plugin directory; repeat for several. Env: COURTYARD_PLUGIN_DIRS.",
        ),
        click.option(
            "--app-dir",
            "app_dirs",
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="An app directory; repeat for several. Env: COURTYARD_APP_DIRS.",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where Courtyard keeps its data [default: ./data].",
        ),
        click.option(
            "--strict/--no-strict",
            default=None,
            help="Refuse to start (or reload) when any plugin fails.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(config: str | None, **flags: Any) -> Settings:
    try:
        return load_settings(flags, config=config)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None


class CourtyardCLI(click.Group):
    """The core commands, plus those that plugins add through `courtyard_commands`."""

    def _plugin_commands(self) -> dict[str, click.Command]:
        from .commands import plugin_commands

        return plugin_commands(_load(None), reserved=set(super().list_commands(None)))  # type: ignore[arg-type]

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Core commands, then plugin commands."""
        return [*super().list_commands(ctx), *sorted(self._plugin_commands())]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """A core command, else a plugin's (plugins are imported only when needed)."""
        return super().get_command(ctx, name) or self._plugin_commands().get(name)


@click.group(cls=CourtyardCLI)
@click.version_option(__version__, prog_name="courtyard")
def main() -> None:
    """Courtyard: a plugin-host runtime on Quart and Hypercorn."""


@main.command()
@_settings_options
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
    from .logs import configure_logging
    from .server import serve as run

    settings = _load(config, **flags)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(run(settings))
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def plugins() -> None:
    """Inspect plugins, and manage those of a running server."""


@plugins.command("list")
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@remote_options(default_url=None)
def list_plugins(
    config: str | None, as_json: bool, url: str | None, api_key: str | None, **flags: Any
) -> None:
    """List plugins, importing and ordering them as a start would (no startup hooks).

    With --url (or COURTYARD_URL), list those a running server finds instead.
    """
    if url and (config or any(v not in (None, ()) for v in flags.values())):
        if click.get_current_context().get_parameter_source("url").name == "COMMANDLINE":
            raise click.UsageError("--url lists a server's plugins: it takes no local options")
        url = None  # COURTYARD_URL is set, but local options ask for a local list
    if url:
        from .remote import remote_list

        remote_list(url, api_key, as_json)
        return
    from .commands import plugin_table

    rows = plugin_table(_load(config, **flags))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins found")
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        line = f"{row['name']:<{width}}  {row['version'] or '-':<10} {row['status']:<9} "
        line += f"{row['source']:<12} {row['path']}"
        click.echo(line)
        if row["hooks"]:
            hooks = ", ".join(h.removeprefix("courtyard_") for h in row["hooks"])
            click.echo(f"{'':<{width}}  hooks: {hooks} (imported in {row['import_ms']} ms)")
        if row["error"]:
            click.echo(f"{'':<{width}}  error: {row['error']}")
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)


add_remote_commands(plugins, main)
main.add_command(new)
main.add_command(keys)
main.add_command(audit)
from .cli_db import db  # noqa: E402 (it uses the settings options above)

main.add_command(db)
