"""The `courtyard` command line: `main`, which gathers a module's group per command.

- serve.py: `courtyard serve` and `courtyard dev`;
- plugins.py, apps.py: `courtyard plugins ...` and `courtyard apps ...` (local listing,
  and the commands for a running server, which talk to it through client.py);
- keys.py, db.py, audit.py, new.py: `courtyard keys|db|audit|new ...`;
- pack.py, upload.py: packing a folder into an archive, and sending one;
- plugin_commands.py: the commands plugins add, found by loading them without serving;
- options.py, output.py, errors.py: what the commands share (options, printing JSON and
  rows, reporting failures).
"""

from __future__ import annotations

import click

from .. import __version__
from . import apps, audit, db, keys, new, plugins, serve, status
from .plugin_commands import PluginCommandGroup

__all__ = ["add_remote_commands", "main"]


@click.group(cls=PluginCommandGroup)
@click.version_option(__version__, prog_name="courtyard")
def main() -> None:
    """Courtyard: a plugin-host runtime on Quart, served by granian or Hypercorn."""


def add_remote_commands(plugins_group: click.Group, main_group: click.Group) -> None:
    """Add `pack`, `upload`, `loaded`, `remove` and `reload` to a `plugins` group and the
    `apps` group to `main_group`: what talks to a running server (and packs for it)."""
    for command in plugins.SERVER_COMMANDS:
        plugins_group.add_command(command)
    main_group.add_command(apps.apps)


main.add_command(serve.serve)
main.add_command(serve.dev)
main.add_command(plugins.plugins)
add_remote_commands(plugins.plugins, main)
for group in (new.new, keys.keys, audit.audit, db.db, status.status):
    main.add_command(group)
