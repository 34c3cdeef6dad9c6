"""`courtyard apps`: pack apps, and manage those of a running server (`upload`, `list`,
`remove`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from .client import Server
from .errors import reported
from .options import json_option, remote_options
from .output import Column, field, print_json, print_rows
from .pack import pack_command
from .upload import print_uploaded, upload


@click.group()
def apps() -> None:
    """Pack apps, and manage those of a running server."""


apps.add_command(pack_command("app"))


@apps.command("upload")
@click.argument("source", metavar="FILE_OR_DIR", type=click.Path(exists=True, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace the version if it is installed.")
@remote_options()
@json_option
@reported
def upload_app(source: Path, overwrite: bool, url: str, api_key: str | None, as_json: bool) -> None:
    """Install an app version on the server from an archive or a folder.

    FILE_OR_DIR is a .tgz, .tar.gz or .zip, or an app folder (packed first). Versions are
    immutable: an installed one is refused (409 VERSION_EXISTS) unless --overwrite.
    """
    body = upload("app", source, Server(url, api_key), as_json, overwrite)
    print_uploaded("app", body, as_json)


@apps.command("list")
@remote_options()
@json_option
@reported
def list_apps(url: str, api_key: str | None, as_json: bool) -> None:
    """List the apps installed on the server, with their versions."""
    print_rows(
        Server(url, api_key).rows("/api/apps/"),
        [
            Column("Name", field("name")),
            Column("Versions", lambda row: ", ".join(row.get("versions", []))),
            Column("Path", field("path")),
        ],
        as_json=as_json,
        empty="no apps installed",
    )


@apps.command("remove")
@click.argument("name")
@click.argument("version", required=False)
@remote_options()
@json_option
@reported
def remove_app(
    name: str, version: str | None, url: str, api_key: str | None, as_json: bool
) -> None:
    """Remove an app, or one version of it, from the server."""
    body = Server(url, api_key).request("DELETE", app_path(name, version))
    if as_json:
        print_json(body)
    else:
        click.echo(f"removed app {name}" + (f" {version}" if version else ""))


def app_path(name: str, version: str | None = None) -> str:
    """`/api/apps/:scope/:name[/:version]` for app `name` (scope `_` when unscoped)."""
    from courtyard_sdk import is_valid_name

    if not is_valid_name(name):
        raise click.BadParameter(f"{name!r} is not a [@scope/]name app name", param_hint="NAME")
    scope, _, bare = name.rpartition("/")
    path = f"/api/apps/{quote(scope or '_', safe='@')}/{quote(bare, safe='')}"
    return path + (f"/{quote(version, safe='')}" if version else "")
