"""`courtyard plugins`: list the plugins a start would load (or a server's), and manage
those of a running server (`pack`, `upload`, `loaded`, `remove`, `reload`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from click.core import ParameterSource

from ..settings import Settings
from .build import build
from .client import RemoteError, Server
from .errors import fail, reported
from .options import json_option, read_settings, remote_options, settings_options
from .output import Column, field, print_json, print_rows
from .pack import pack_command
from .plugin_commands import prepare
from .upload import print_uploaded, upload


@click.group()
def plugins() -> None:
    """Inspect and build plugins, and manage those of a running server."""


plugins.add_command(build)


@plugins.command("list")
@settings_options
@json_option
@remote_options(default_url=None)
def list_plugins(
    config: str | None, as_json: bool, url: str | None, api_key: str | None, **flags: Any
) -> None:
    """List plugins, importing and ordering them as a start would (no startup hooks).

    With --url (or COURTYARD_URL), list those a running server finds instead.
    """
    if url and (config or any(v not in (None, ()) for v in flags.values())):
        if click.get_current_context().get_parameter_source("url") is ParameterSource.COMMANDLINE:
            raise click.UsageError("--url lists a server's plugins: it takes no local options")
        url = None  # COURTYARD_URL is set, but local options ask for a local list
    if url:
        remote_list(url, api_key, as_json)
        return
    rows = plugin_rows(read_settings(config, **flags))
    print_rows(
        rows,
        # Plain columns sit two spaces apart; these widths keep the documented layout.
        [
            Column("Name", field("name")),
            Column("Version", field("version", "-"), min_width=9),
            Column("Status", field("status"), min_width=8),
            Column("Source", field("source"), min_width=11),
            Column("Path", field("path")),
        ],
        as_json=as_json,
        empty="no plugins found",
        plain=True,
        details=_details,
    )
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)


def plugin_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every discovered plugin with its version, status, error, hooks and import time."""
    generation = prepare(settings)
    return [
        {
            "name": rec.name,
            "version": rec.candidate.manifest.version if rec.candidate.manifest else None,
            "status": rec.status,
            "source": rec.candidate.source,
            "path": str(rec.candidate.root),
            "error": rec.error,
            "import_ms": round(rec.import_seconds * 1000, 1),
            "hooks": generation.hooks_of(rec),
        }
        for rec in generation.records
    ]


def _details(row: dict[str, Any]) -> list[str]:
    """The lines under a plugin: the hooks it implements, and its error."""
    lines = []
    if row["hooks"]:
        hooks = ", ".join(h.removeprefix("courtyard_") for h in row["hooks"])
        lines.append(f"hooks: {hooks} (imported in {row['import_ms']} ms)")
    if row["error"]:
        lines.append(f"error: {row['error']}")
    return lines


def remote_list(url: str, api_key: str | None, as_json: bool) -> None:
    """Print the plugins the server at `url` finds on disk, as `courtyard plugins list` does
    locally: a table (exit status 1 if any plugin failed) or, with `as_json`, JSON."""
    try:
        rows = Server(url, api_key).rows("/api/plugins/")
    except RemoteError as exc:
        fail(exc.code, exc.message, as_json)
    columns = [
        Column("Name", field("name")),
        Column("Version", field("version", "-")),
        Column("Status", field("status")),
        Column("Source", field("source")),
        Column("Path", field("path")),
    ]
    if any(row.get("error") for row in rows):
        columns.append(Column("Error", field("error")))
    print_rows(rows, columns, as_json=as_json, empty="no plugins found")
    if any(row.get("status") == "failed" for row in rows):
        raise click.exceptions.Exit(1)


# The commands for a running server, and `pack` (what `upload` sends): SERVER_COMMANDS,
# which `add_remote_commands` adds to the group.


@click.command("upload")
@click.argument("source", metavar="FILE_OR_DIR", type=click.Path(exists=True, path_type=Path))
@remote_options()
@json_option
@reported
def upload_plugin(source: Path, url: str, api_key: str | None, as_json: bool) -> None:
    """Install a plugin on the server from an archive or a folder.

    FILE_OR_DIR is a .tgz, .tar.gz or .zip, or a plugin folder (packed first). The server
    installs it in its first plugin directory and reloads its plugins.
    """
    print_uploaded("plugin", upload("plugin", source, Server(url, api_key), as_json), as_json)


@click.command("loaded")
@remote_options()
@json_option
@reported
def loaded(url: str, api_key: str | None, as_json: bool) -> None:
    """List the plugins the server runs, in dependency order."""
    print_rows(
        Server(url, api_key).rows("/api/plugins/loaded"),
        [
            Column("Name", field("name")),
            Column("Base", field("base")),
            Column("Dependencies", _dependencies),
            Column("Menus", _menus),
        ],
        as_json=as_json,
        empty="no plugins loaded",
    )


def _menus(row: dict[str, Any]) -> str:
    return ", ".join(menu.get("title", "") for menu in row.get("menus", []))


def _dependencies(row: dict[str, Any]) -> str:
    optional = (f"{d} (optional)" for d in row.get("optionalDependencies", []))
    return ", ".join([*row.get("dependencies", []), *optional])


@click.command("remove")
@click.argument("name")
@remote_options()
@json_option
@reported
def remove(name: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Remove a plugin from the server.

    NAME's files go from the server's plugin directory, then the server reloads its plugins.
    """
    body = Server(url, api_key).request("DELETE", f"/api/plugins/{quote(name, safe='')}")
    if as_json:
        print_json(body)
    else:
        click.echo(f"removed plugin {name}")


@click.command("reload")
@remote_options()
@json_option
@reported
def reload(url: str, api_key: str | None, as_json: bool) -> None:
    """Reload the server's plugins.

    The server re-scans its plugin directories; the exit status is 1 if any plugin failed.
    """
    body = Server(url, api_key).request("POST", "/api/plugins/reload")
    failed = body.get("failed", []) if isinstance(body, dict) else []
    if as_json:
        print_json(body)
    else:
        running = body.get("plugins", []) if isinstance(body, dict) else []
        click.echo(f"reloaded: {len(running)} loaded, {len(failed)} failed")
        columns = [Column("Name", field("name")), Column("Base", field("base"))]
        print_rows(running, columns, as_json=False, empty=None)
        for item in failed:
            click.echo(f"failed: {item.get('name')}: {item.get('error')}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


SERVER_COMMANDS = (pack_command("plugin"), upload_plugin, loaded, remove, reload)
