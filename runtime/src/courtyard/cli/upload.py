"""`courtyard plugins upload` and `courtyard apps upload`: an archive sent as it is, or a
folder packed first, with a progress bar on a terminal."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from .client import Server
from .output import console, note, print_json
from .pack import Kind, pack, summary


def upload(
    kind: Kind, source: Path, server: Server, as_json: bool = False, overwrite: bool = False
) -> Any:
    """Upload an archive, or a folder packed first, and return the server's answer."""
    if not source.is_dir():
        return _send(kind, source, server, as_json, overwrite)
    with tempfile.TemporaryDirectory(prefix="courtyard-pack-") as tmp:
        packed = pack(source, kind, Path(tmp))
        if not as_json:
            note(f"packed {packed.name} {packed.version}: {summary(packed)}")
        return _send(kind, packed.path, server, as_json, overwrite)


def _send(kind: Kind, archive: Path, server: Server, as_json: bool, overwrite: bool) -> Any:
    """Stream `archive` to `POST /api/<kind>s/upload`, with a progress bar on a terminal."""
    path = f"/api/{kind}s/upload"
    params = {"overwrite": "true"} if overwrite else None
    size = archive.stat().st_size
    err = console(stderr=True)
    if as_json or not err.is_terminal:
        return server.upload(path, archive, params=params)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(f"uploading {archive.name}", total=size)

        def moved(position: int) -> None:
            # Once every byte is sent, the server is installing (and reloading).
            sent = position >= size
            label = f"installing {archive.name}" if sent else f"uploading {archive.name}"
            progress.update(task, completed=position, description=label)

        return server.upload(path, archive, params=params, moved=moved)


def print_uploaded(kind: Kind, body: Any, as_json: bool) -> None:
    """The server's answer to an upload: `uploaded <kind> NAME VERSION to PATH`, or JSON."""
    if as_json:
        print_json(body)
        return
    item = body.get("data", {}).get(kind, {}) if isinstance(body, dict) else {}
    click.echo(
        f"uploaded {kind} {item.get('name', '?')} {item.get('version', '?')}"
        f" to {item.get('installedAt', '?')}"
    )
