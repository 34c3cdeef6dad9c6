"""The commands plugins add (the `courtyard_commands` hook), found by loading the plugins
without serving them.

`prepare` loads them as a start would (discovery, settings, ordering, imports), without
startup hooks or any service started; `plugins list` and `db` learn from it too.
"""

from __future__ import annotations

import logging

import click

from ..generation import Generation
from ..services import Services
from ..settings import Settings
from .options import read_settings

log = logging.getLogger("courtyard.cli")


def prepare(settings: Settings) -> Generation:
    """The plugins `settings` find, imported and ordered, nothing started."""
    generation = Generation(0, settings, Services(settings))
    generation.prepare()
    return generation


def plugin_commands(settings: Settings, reserved: set[str]) -> dict[str, click.Command]:
    """The commands loaded plugins add; a name already taken is logged and skipped."""
    generation = prepare(settings)
    commands: dict[str, click.Command] = {}
    owners: dict[str, str] = {}
    for outcome in generation.hooks.each(generation.loaded, "courtyard_commands", click.Command):
        rec = outcome.plugin
        if outcome.failure is not None:
            log.error("%s | courtyard_commands failed: %s", rec.name, outcome.failure.error)
            continue
        for command in outcome.items:
            name = command.name or ""
            if name in reserved or name in commands:
                taken_by = "the runtime" if name in reserved else owners[name]
                log.error("%s | command %r is already taken by %s", rec.name, name, taken_by)
                continue
            commands[name], owners[name] = command, rec.name
    return commands


class PluginCommandGroup(click.Group):
    """The core commands, then those plugins add; plugins are loaded only when a name is
    not a core command's (or for `--help`), once per invocation."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        found: dict[str, click.Command] | None = ctx.meta.get(__name__)
        if found is None:
            reserved = set(super().list_commands(ctx))
            found = ctx.meta[__name__] = plugin_commands(read_settings(None), reserved)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Core commands, then plugin commands."""
        return [*super().list_commands(ctx), *sorted(self._plugin_commands(ctx))]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """A core command, else a plugin's."""
        return super().get_command(ctx, name) or self._plugin_commands(ctx).get(name)
