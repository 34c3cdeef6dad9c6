"""`courtyard keys create|list|revoke`: API keys, straight in the configured database.

These commands need no running server, so the first admin key can be made before
anything is protected; a running server (this one or another on the same database) sees
a new key within a second, and a revoked one stops working at once. They read the same
settings as `courtyard serve` (`--config`, `COURTYARD_DATABASE_URL`, `--data-dir`).

`create` prints the key's secret alone on stdout (`KEY=$(courtyard keys create ...)`)
and its details on stderr; the secret is never shown again. Errors print as
`error: CODE: message` with exit status 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from courtyard_sdk import ApiError, CourtyardError

from ..services.auth import Auth, parse_duration
from ..services.database import Database
from ..services.keys import MIGRATIONS, OWNER, KeyInfo, key_id_of
from ..settings import Settings
from .errors import fail
from .options import json_option, read_settings
from .output import Column, print_json, print_rows

T = TypeVar("T")


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --data-dir, as `courtyard serve` takes them."""
    func = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where Courtyard keeps its data (and its SQLite database) [default: ./data].",
    )(func)
    return click.option("--config", type=click.Path(dir_okay=False), help="Config file (TOML).")(
        func
    )


def _run(settings: Settings, action: Callable[[Auth], Awaitable[T]], as_json: bool) -> T:
    """Run `action` with an auth service on the configured database (its key table
    brought up to date first)."""

    async def run() -> T:
        database = Database(settings.database)
        try:
            await database.start()
            await database.upgrade(OWNER, MIGRATIONS)
            auth = Auth(settings, database)
            try:
                return await action(auth)
            finally:
                await auth.close()
        finally:
            await database.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        fail(exc.code, exc.message, as_json)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (in the configured database, no server needed)."""


@keys.command("create")
@click.option("--name", required=True, help="A label: who or what uses the key.")
@click.option(
    "--role", "roles", multiple=True, help="admin, editor, viewer or a custom role; repeatable."
)
@click.option(
    "--permission", "permissions", multiple=True, help="Such as queues:write; repeatable."
)
@click.option("--tenant", help="The tenant the key acts for.")
@click.option("--expires-in", help="Lifetime: seconds, or 90m, 12h, 30d, 2w [default: never].")
@_options
@json_option
def create(
    name: str,
    roles: tuple[str, ...],
    permissions: tuple[str, ...],
    tenant: str | None,
    expires_in: str | None,
    config: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Create an API key and print its secret, this once.

    Give at least one --role or --permission. Present the key as `Authorization: Bearer
    <key>` or `X-API-Key: <key>` (the CLI's --api-key, COURTYARD_API_KEY).
    """
    settings = read_settings(config, data_dir=data_dir)

    async def action(auth: Auth) -> tuple[KeyInfo, str]:
        return await auth.create_key(
            name=name,
            roles=roles,
            permissions=permissions,
            tenant=tenant,
            expires_in=None if expires_in is None else parse_duration(expires_in),
        )

    info, secret = _run(settings, action, as_json)
    if as_json:
        print_json({**info.to_json(), "secret": secret})
        return
    held = ", ".join(info.roles + info.permissions)
    click.echo(f"created key {info.id} ({info.name}): {held}", err=True)
    if info.tenant:
        click.echo(f"tenant: {info.tenant}", err=True)
    if info.expires_at:
        click.echo(f"expires: {info.expires_at.isoformat(timespec='seconds')}", err=True)
    click.echo("the secret below is shown once: store it now", err=True)
    click.echo(secret)


def _day(stamp: str | None) -> str:
    """`2025-01-31T10:20:30.123Z` -> `2025-01-31 10:20`."""
    return stamp[:16].replace("T", " ") if stamp else "-"


_COLUMNS = (
    Column("Id", lambda row: row["id"]),
    Column("Name", lambda row: row["name"]),
    Column("Roles and permissions", lambda row: ", ".join(row["roles"] + row["permissions"])),
    Column("Tenant", lambda row: row["tenant"] or "-"),
    Column("Status", lambda row: row["status"]),
    Column("Created", lambda row: _day(row["createdAt"])),
    Column("Expires", lambda row: _day(row["expiresAt"])),
    Column("Used", lambda row: _day(row["lastUsedAt"])),
)


@keys.command("list")
@_options
@json_option
def list_keys(config: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List every key (active, expired, revoked), oldest first; never their secrets."""
    found = _run(read_settings(config, data_dir=data_dir), Auth.list_keys, as_json)
    rows = [info.to_json() for info in found]
    print_rows(rows, _COLUMNS, as_json=as_json, empty="no API keys")


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@_options
@json_option
def revoke(key_id: str, config: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Revoke key ID (as `list` shows it, or the key itself): it stops working at once."""

    async def action(auth: Auth) -> KeyInfo:
        return await auth.revoke_key(key_id_of(key_id) or key_id)

    info = _run(read_settings(config, data_dir=data_dir), action, as_json)
    if as_json:
        print_json(info.to_json())
    else:
        click.echo(f"revoked key {info.id} ({info.name})")
