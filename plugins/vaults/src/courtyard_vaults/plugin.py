"""The vaults plugin's hooks.

`courtyard_provides` reads the master key from the environment and makes the generation's
`Vaults` (the service other plugins get with `ctx.get_plugin("vaults")`), kept in the plugin
context (`ctx.state[Vaults]`); the routes and the page are served by it; the CLI group works
on the same database.
"""

from __future__ import annotations

import logging
import os

import click
from courtyard_sdk import Blueprint, PluginContext, hookimpl

from . import api, cli, page
from .crypto import MASTER_KEY_VARS
from .service import Vaults


@hookimpl
def courtyard_provides(ctx: PluginContext) -> Vaults:
    """The generation's vaults, keyed from RUNQY_VAULT_MASTER_KEY."""
    vaults = Vaults.from_environ(ctx.db)
    ctx.state[Vaults] = vaults
    return vaults


@hookimpl
def courtyard_routes(ctx: PluginContext) -> list[Blueprint]:
    """`/api/vaults...` (runqy's API) and the page at the plugin's base."""
    vaults = ctx.state[Vaults]
    return [api.blueprint(vaults), page.blueprint(vaults)]


@hookimpl
def courtyard_startup(ctx: PluginContext) -> None:
    """Say whether vaults are enabled, and under which key id (never the key)."""
    vaults = ctx.state[Vaults]
    if vaults.keyring is None:
        # No key is the quiet default of a fresh server; a key that is set but unusable is
        # an operator's mistake worth a warning.
        configured = any(os.environ.get(name, "").strip() for name in MASTER_KEY_VARS)
        ctx.logger.log(
            logging.WARNING if configured else logging.INFO,
            "%s; every vault route answers 503",
            vaults.disabled_reason,
        )
        return
    others = sorted(set(vaults.keyring.keys) - {vaults.keyring.current.id})
    ctx.logger.info(
        "vaults enabled: master key %s%s",
        vaults.keyring.current.id,
        f", read keys {', '.join(others)}" if others else "",
    )


@hookimpl
def courtyard_commands(ctx: PluginContext) -> click.Command:
    """`courtyard vaults generate-key | status | rotate-key`."""
    return cli.commands(ctx)
