"""What the CLI learns by loading plugins without serving them."""

from __future__ import annotations

import logging
from typing import Any

import click

from .generation import LOADED, Generation
from .services import Services
from .settings import Settings

log = logging.getLogger("courtyard.cli")


def _prepared(settings: Settings) -> Generation:
    generation = Generation(0, settings, Services(settings))
    generation.prepare()
    return generation


def plugin_table(settings: Settings) -> list[dict[str, Any]]:
    """Every discovered plugin with its version, status, error, hooks and import time."""
    generation = _prepared(settings)
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


def plugin_commands(settings: Settings, reserved: set[str]) -> dict[str, click.Command]:
    """The commands loaded plugins add; a name already taken is logged and skipped."""
    generation = _prepared(settings)
    commands: dict[str, click.Command] = {}
    owners: dict[str, str] = {}
    for rec in generation.records:
        if rec.status != LOADED:
            continue
        try:
            result = generation.call(rec, "courtyard_commands")
        except Exception as exc:
            log.error("%s | courtyard_commands failed: %s", rec.name, exc)
            continue
        for command in result if isinstance(result, list) else [result] if result else []:
            name = command.name or ""
            if name in reserved or name in commands:
                taken_by = "the runtime" if name in reserved else owners[name]
                log.error("%s | command %r is already taken by %s", rec.name, name, taken_by)
                continue
            commands[name], owners[name] = command, rec.name
    return commands
