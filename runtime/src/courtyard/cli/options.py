"""Options several commands share: the settings `courtyard serve` reads, `--json`, and
the server to talk to (`--url`, `--api-key`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from courtyard_sdk import CourtyardError

from ..settings import Settings, load_settings
from .client import DEFAULT_URL

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def settings_options(func: F) -> F:
    """`--config`, `--plugin-dir`, `--app-dir`, `--data-dir` and `--strict`: the options
    of every command that reads the settings as `courtyard serve` does."""
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


def read_settings(config: str | None, **flags: Any) -> Settings:
    """The settings from `config`, the environment and the command's `flags`; a bad
    setting is a clean `error: ...` rather than a traceback."""
    try:
        return load_settings(flags, config=config)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/]", value, re.IGNORECASE):
        raise click.BadParameter("must be an http:// or https:// URL, such as " + DEFAULT_URL)
    return value


def remote_options(default_url: str | None = DEFAULT_URL) -> Callable[[F], F]:
    """`--url` (env COURTYARD_URL) and `--api-key` (env COURTYARD_API_KEY).

    :param default_url: None for a command that works locally unless given a URL.
    """
    url_help = (
        "The Courtyard server to talk to."
        if default_url
        else "List the plugins of the Courtyard server at this URL instead."
    )

    def decorate(func: F) -> F:
        func = click.option(
            "--api-key",
            envvar="COURTYARD_API_KEY",
            show_envvar=True,
            help="Sent as 'Authorization: Bearer <key>' and 'X-API-Key'.",
        )(func)
        return click.option(
            "--url",
            envvar="COURTYARD_URL",
            default=default_url,
            show_default=default_url is not None,
            show_envvar=True,
            callback=_check_url,
            help=url_help,
        )(func)

    return decorate
