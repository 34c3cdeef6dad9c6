"""`courtyard db`: apply and inspect migrations, and start a plugin's next revision.

`upgrade` and `status` load the plugins as `courtyard plugins list` does (imports, no
startup hooks) to learn which owners of tables there are: the runtime's services first,
then each loaded plugin with `migrations` in its `plugin.toml`, in dependency order.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import sys
from pathlib import Path
from typing import Any

import click
from courtyard_sdk import CourtyardError, read_manifest

from ..generation import FAILED, Generation
from ..services.database import Database, MigrationError
from ..settings import Settings
from .options import json_option, read_settings, settings_options
from .output import Column, print_json, print_rows
from .plugin_commands import prepare


@click.group()
def db() -> None:
    """Apply and inspect database migrations; write a plugin's next revision."""


@db.command()
@settings_options
@json_option
def upgrade(config: str | None, as_json: bool, **flags: Any) -> None:
    """Apply every pending migration: the runtime's, then each plugin's.

    A plugin whose migrations fail is reported with the plugins that require it, whose
    migrations are not run; the exit status is then 1.
    """
    rows = _run(_upgrade_all(read_settings(config, **flags)))
    if as_json:
        print_json(rows)
    else:  # a line per owner: what it did is not a table
        for row in rows:
            if row["error"]:
                click.echo(f"{row['owner']}: failed: {row['error']}")
            elif row["applied"]:
                click.echo(f"{row['owner']}: applied {', '.join(row['applied'])}")
            else:
                click.echo(f"{row['owner']}: up to date")
    if any(row["error"] for row in rows):
        sys.exit(1)


@db.command()
@settings_options
@json_option
def status(config: str | None, as_json: bool, **flags: Any) -> None:
    """Show each owner's revision, its head, and whether it is up to date.

    The exit status is 1 when any owner is not up to date.
    """
    rows = _run(_status_all(read_settings(config, **flags)))
    print_rows(
        rows,
        # Plain columns sit two spaces apart; these widths keep the documented layout.
        [
            Column("Owner", lambda row: row["owner"]),
            Column("Current", lambda row: row["current"] or "-", min_width=13),
            Column("Head", lambda row: row["head"] or "-", min_width=13),
            Column("State", _state),
        ],
        as_json=as_json,
        empty="no owner of tables found",
        plain=True,
    )
    if any(row["state"] != "up to date" for row in rows):
        sys.exit(1)


def _state(row: dict[str, Any]) -> str:
    state: str = f"failed: {row['error']}" if row["error"] else row["state"]
    if row["state"] == "behind":
        state += f" ({len(row['pending'])} to apply)"
    return state


@db.command()
@click.argument(
    "plugin_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@click.option("-m", "--message", required=True, help="What the revision does.")
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Draft the operations from the plugin's models (compared with its revisions).",
)
def revision(plugin_dir: Path, message: str, autogenerate: bool) -> None:
    """Write a new revision into PLUGIN_DIR's migrations folder (the folder that
    `migrations` in its plugin.toml names), chained to the current head: empty, or with
    --autogenerate, drafted from the plugin's table models."""
    try:
        path = write_revision(plugin_dir, message, autogenerate=autogenerate)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")


# Work ----------------------------------------------------------------------------------


def _run(work: Any) -> list[dict[str, Any]]:
    try:
        return asyncio.run(work)
    except CourtyardError as exc:
        raise click.ClickException(str(exc)) from None


def _owners(generation: Generation) -> list[tuple[str, Path, str]]:
    """(owner, folder, kind) of each owner of tables that loaded, in upgrade order."""
    owners = [(owner, folder, "runtime") for owner, folder in generation.services.migrations]
    for rec in generation.loaded:
        folder = generation.migrations_of(rec)
        if folder is not None:
            owners.append((rec.name, folder, "plugin"))
    return owners


def _unloaded(generation: Generation) -> list[dict[str, Any]]:
    """Plugins with migrations that did not load: their tables cannot be brought up."""
    return [
        _row(rec.name, "plugin", error=f"not loaded: {rec.error}")
        for rec in generation.records
        if rec.status == FAILED and generation.migrations_of(rec) is not None
    ]


def _row(owner: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"owner": owner, "kind": kind, "error": None, **fields}


async def _upgrade_all(settings: Settings) -> list[dict[str, Any]]:
    generation = await asyncio.to_thread(prepare, settings)
    database = generation.services.database
    rows: list[dict[str, Any]] = []
    try:
        await database.start()
        for owner, folder in generation.services.migrations:
            try:
                applied = await database.upgrade(owner, folder)
            except MigrationError as exc:  # the runtime would not start: go no further
                return [*rows, _row(owner, "runtime", applied=[], error=str(exc))]
            rows.append(_row(owner, "runtime", applied=applied))
        unloaded = _unloaded(generation)
        with_migrations = [r for r in generation.loaded if generation.migrations_of(r)]
        applied_by_plugin = await generation._migrate()
        for rec in with_migrations:
            error = rec.error if rec.status == FAILED else None
            applied = applied_by_plugin.get(rec.name, [])
            rows.append(_row(rec.name, "plugin", applied=applied, error=error))
        return rows + [{**row, "applied": []} for row in unloaded]
    finally:
        await database.close()


async def _status_all(settings: Settings) -> list[dict[str, Any]]:
    generation = await asyncio.to_thread(prepare, settings)
    database = generation.services.database
    rows: list[dict[str, Any]] = []
    try:
        await database.start()
        for owner, folder, kind in _owners(generation):
            rows.append(await _status_row(database, owner, folder, kind))
        unloaded = _unloaded(generation)
        return rows + [
            {**row, "current": None, "head": None, "pending": [], "state": "failed"}
            for row in unloaded
        ]
    finally:
        await database.close()


async def _status_row(database: Database, owner: str, folder: Path, kind: str) -> dict[str, Any]:
    try:
        found = await database.status(owner, folder)
    except MigrationError as exc:
        return _row(
            owner, kind, current=None, head=None, pending=[], state="failed", error=str(exc)
        )
    return _row(
        owner,
        kind,
        current=found.current,
        head=found.head,
        pending=found.pending,
        state=found.state,
    )


# Writing a revision ----------------------------------------------------------------------

_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {revises}
Create Date: {date}
"""

import sqlalchemy as sa
{imports}from alembic import op

revision: str = "{revision}"
down_revision: str | None = {down_revision}
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Apply this revision (op.create_table, op.add_column, ...)."""{upgrade}


def downgrade() -> None:
    """Undo `upgrade`."""{downgrade}
'''


def write_revision(plugin_dir: Path, message: str, *, autogenerate: bool = False) -> Path:
    """Write a new revision, chained to the current head, into the migrations folder of
    the plugin in `plugin_dir`: empty, or drafted from the plugin's models (autogenerate.py).

    :return: the new file.
    :raises MigrationError: when the plugin declares no `migrations`, the message is
        unusable, or its revisions have several heads.
    :raises ManifestError: when `plugin_dir` holds no valid `plugin.toml`.
    """
    manifest = read_manifest(plugin_dir)
    if manifest.migrations is None:
        raise MigrationError(
            f'{manifest.name} has no migrations folder: add `migrations = "migrations"` '
            "to its plugin.toml first"
        )
    message = " ".join(message.split())
    if not message:
        raise MigrationError("the revision message is empty: say what the revision does")
    # Alembic (about 12 MiB resident, with mako and pygments) is imported by the commands
    # that write revisions, not by every `courtyard` command.
    from alembic.script import ScriptDirectory
    from alembic.util import rev_id

    from .autogenerate import draft

    folder = plugin_dir / manifest.migrations
    folder.mkdir(parents=True, exist_ok=True)
    try:
        heads = ScriptDirectory(str(folder), version_locations=[str(folder)]).get_heads()
    except Exception as exc:
        raise MigrationError(f"{manifest.name}: cannot read {folder}: {exc}") from None
    if len(heads) > 1:
        raise MigrationError(
            f"{manifest.name}: the revisions in {folder} have several heads "
            f"({', '.join(sorted(heads))}): chain them into one before adding another"
        )
    up = down = ""
    if autogenerate:
        up, down = draft(plugin_dir, manifest, folder)
    revision_id = rev_id()
    name = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "revision"
    path = folder / f"{revision_id}_{name}.py"
    text = _TEMPLATE.format(
        imports="import sqlmodel\n" if "sqlmodel." in up + down else "",
        upgrade="\n" + up if up else "",
        downgrade="\n" + down if down else "",
        message=message.replace("\\", "\\\\").replace('"""', '\\"\\"\\"'),
        revision=revision_id,
        revises=heads[0] if heads else "(none: the first revision)",
        down_revision=f'"{heads[0]}"' if heads else None,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    path.write_text(text, encoding="utf-8")
    return path
