"""`courtyard vaults ...`: master keys. Entries are managed through the HTTP API.

The commands work on the database of the same settings as `courtyard serve` (the
`courtyard.toml` in force, `COURTYARD_DATABASE_URL`, `COURTYARD_DATA_DIR`). Keys come
from environment variables only, never from the command line, where `ps` and shell
histories would show them; nothing prints a key or a value.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
from courtyard_sdk import PluginContext
from courtyard_sdk.services import Database

from .crypto import (
    MASTER_KEY_VARS,
    READ_KEYS_VAR,
    KeyConfigError,
    Keyring,
    MasterKey,
    generate_key,
    master_key_from,
    read_keys_from,
)
from .rotation import has_tables, key_usage, rotate


def _run(db: Database, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work` in an event loop, then release the database's connections."""

    async def main() -> Any:
        try:
            return await work()
        finally:
            await db.engine.dispose()

    return asyncio.run(main())


def _where(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=True)


def _keys() -> tuple[MasterKey | None, list[MasterKey]]:
    try:
        return master_key_from(os.environ), read_keys_from(os.environ)
    except KeyConfigError as exc:
        raise click.ClickException(str(exc)) from None


def commands(ctx: PluginContext) -> click.Group:
    """The `courtyard vaults` group, on `ctx`'s database."""
    db = ctx.db

    @click.group("vaults")
    def vaults() -> None:
        """Vault master keys: generate one, see which keys seal the values, rotate."""

    @vaults.command("generate-key")
    def generate() -> None:
        """Print a new random master key (32 bytes, standard base64).

        Put it in RUNQY_VAULT_MASTER_KEY (or COURTYARD_VAULT_MASTER_KEY) in the server's
        environment; keep it secret, and keep a copy: values sealed under a lost key are
        lost with it.
        """
        click.echo(generate_key())

    @vaults.command("status")
    def status() -> None:
        """Show the ids of the keys set in the environment and how many values each key
        sealed (ids are fingerprints: they reveal nothing about the keys)."""
        master, read = _keys()
        click.echo(f"database: {_where(db)}")
        click.echo(f"master key: {master.id if master else f'not set ({MASTER_KEY_VARS[0]})'}")
        click.echo(f"read keys: {', '.join(k.id for k in read) or 'none'}")

        async def work() -> dict[str, int]:
            return await key_usage(db) if await has_tables(db) else {}

        usage = _run(db, work)
        if not usage:
            click.echo("values: none")
            return
        known = {k.id: "read key" for k in read}
        if master is not None:
            known[master.id] = "master key"
        for key_id, count in sorted(usage.items()):
            role = known.get(key_id, "UNKNOWN key: these values cannot be read")
            click.echo(f"values under {key_id}: {count} ({role})")

    @vaults.command("rotate-key")
    @click.option(
        "--new-key-env",
        metavar="VAR",
        help="The environment variable holding the key to re-encrypt under "
        "[default: the master key, RUNQY_VAULT_MASTER_KEY or COURTYARD_VAULT_MASTER_KEY].",
    )
    @click.option(
        "--batch-size",
        type=click.IntRange(1, 10_000),
        default=100,
        show_default=True,
        help="Values re-encrypted per transaction.",
    )
    def rotate_key(new_key_env: str | None, batch_size: int) -> None:
        """Re-encrypt every value under one key.

        Values are opened with whichever known key sealed them: the master key, the keys
        in COURTYARD_VAULT_READ_KEYS (comma-separated) or the new key. Each batch is one
        transaction, so an interruption loses nothing: run the command again to finish.
        Exits with status 1 if any value is left under another key. See docs/vaults.md
        for the whole procedure.
        """
        master, read = _keys()
        if new_key_env:
            text = os.environ.get(new_key_env, "").strip()
            if not text:
                raise click.ClickException(f"{new_key_env} is not set (it should hold the new key)")
            try:
                target = MasterKey.parse(text, new_key_env)
            except KeyConfigError as exc:
                raise click.ClickException(str(exc)) from None
        elif master is not None:
            target = master
        else:
            raise click.ClickException(
                f"no key to re-encrypt under: set {MASTER_KEY_VARS[0]} (or "
                f"{MASTER_KEY_VARS[1]}), or name a variable with --new-key-env"
            )
        others = [key for key in (master, *read) if key is not None]
        keyring = Keyring.of(target, others)
        click.echo(f"database: {_where(db)}")
        click.echo(f"re-encrypting under key {target.id} (known keys: {', '.join(keyring.keys)})")

        def progress(done: int) -> None:
            click.echo(f"re-encrypted {done} value(s)")
            sys.stdout.flush()

        async def work() -> Any:
            if not await has_tables(db):
                return None
            return await rotate(db, keyring, batch_size=batch_size, progress=progress)

        result = _run(db, work)
        if result is None:
            click.echo("no vaults in this database: nothing to re-encrypt")
            return
        click.echo(f"done: {result.rotated} value(s) re-encrypted under key {target.id}")
        for reason in result.unreadable.values():
            click.echo(f"left as it is: {reason}", err=True)
        if result.remaining:
            click.echo(
                f"{result.remaining} value(s) are not under key {target.id}: add the keys "
                f"that sealed them to {READ_KEYS_VAR}, or run the command again if servers "
                "were still writing under the previous master key",
                err=True,
            )
            sys.exit(1)
        click.echo(f"every value is under key {target.id}")

    return vaults
