"""Every hook a Courtyard plugin can implement, grouped by lifecycle phase.

A plugin implements a hook by defining a function with the hook's name, decorated with
`courtyard_sdk.hookimpl`, in the module its `plugin.toml` names. An implementation may
take any subset of the hook's arguments, and may be a coroutine function where noted.

Each call receives `ctx`, the calling plugin's own `PluginContext`: its settings, logger,
data directory and `get_plugin()` for the services of its dependencies. Hooks are called
plugin by plugin in dependency order (a plugin after the plugins it depends on).

Phases, in the order a generation is built:

1. Loading: `courtyard_provides`.
2. Building: `courtyard_routes`.
3. Serving: `courtyard_startup`, then per request `courtyard_request`,
   `courtyard_response` and `courtyard_menus`.
4. Retiring: `courtyard_shutdown`.

Outside the server: `courtyard_commands` adds `courtyard <name>` CLI commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from quart import Blueprint, Request, Response

    from .context import PluginContext
    from .manifest import Menu

PROJECT = "courtyard"
hookspec = pluggy.HookspecMarker(PROJECT)


# 1. Loading ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def courtyard_provides(ctx: PluginContext) -> Any:
    """Return the service object this plugin offers to the plugins that depend on it.

    Called once per generation, right after the plugin is imported and before any other
    hook of any plugin that depends on it. Another plugin reaches the object with
    `ctx.get_plugin("<this plugin's name>")`, provided it lists this plugin in its
    `dependencies` or `optional_dependencies`.

    :param ctx: the plugin's context.
    :return: any object, or None to offer nothing. Not awaited: return a plain object.
    """


# 2. Building -----------------------------------------------------------------------------


@hookspec
def courtyard_routes(ctx: PluginContext) -> Blueprint | list[Blueprint] | None:
    """Return the Quart blueprints that hold this plugin's HTTP routes.

    A blueprint created without `url_prefix` is mounted at the plugin's `base`. A blueprint
    created with an explicit `url_prefix` (for example `/api/v1`, `/queue`) is mounted there
    as it is, for plugins that own documented absolute paths. Two plugins claiming the same
    route and method, or a plugin claiming a path the runtime reserves
    (`courtyard_sdk.paths.RESERVED_PREFIXES`: `/api/health`, `/api/plugins`, `/api/apps`,
    `/api/keys`, `/api/audit`, `/api/stream`, `/api/openapi.json`, `/api/docs`,
    `/.well-known`), is a build error that names both and excludes the later plugin.

    Called once per generation, before `courtyard_startup`: build the blueprints here
    rather than at import time, so a reload gets fresh ones.

    :param ctx: the plugin's context.
    :return: a blueprint, a list of blueprints, or None.
    """


# 3. Serving ------------------------------------------------------------------------------


@hookspec
def courtyard_startup(ctx: PluginContext) -> None:
    """Prepare the plugin to serve: open connections, start background work.

    Called once per generation, in dependency order, before the generation takes its first
    request. May be a coroutine function. Raising, or running longer than the runtime's
    startup timeout (30 s by default), excludes the plugin and every plugin that depends on
    it; the rest keeps serving, and the failure is logged and shown by `GET /api/plugins/`.

    :param ctx: the plugin's context.
    """


@hookspec
def courtyard_request(ctx: PluginContext, request: Request) -> Response | None:
    """Look at (or answer) every HTTP request before it reaches its route.

    Called for every request, plugin by plugin in dependency order (only for some paths
    when marked with `courtyard_sdk.only_under`). May be a coroutine function, or return
    an awaitable. Returning a response (anything a Quart view may return) short-circuits: later
    plugins and the route are skipped, and that response is sent (response hooks still
    run).

    :param ctx: the plugin's context.
    :param request: the current Quart request.
    :return: None to go on, or a response to answer with.
    """


@hookspec
def courtyard_response(ctx: PluginContext, request: Request, response: Response) -> Response | None:
    """Look at (or replace) every HTTP response before it is sent.

    Called for every response, error responses included, in reverse dependency order (the
    plugin that saw the request first sees the response last); only for some paths when
    marked with `courtyard_sdk.only_under`. May be a coroutine function, or return an
    awaitable.

    :param ctx: the plugin's context.
    :param request: the current Quart request.
    :param response: the response so far; it may be changed in place.
    :return: None to keep `response`, or another response to send instead.
    """


@hookspec
def courtyard_menus(ctx: PluginContext, request: Request) -> list[Menu | dict[str, Any]] | None:
    """Return menu entries that depend on the request (for example on who is asking).

    Added after the static `menus` of the plugin's manifest in `GET /api/plugins/loaded`.
    May be a coroutine function.

    :param ctx: the plugin's context.
    :param request: the current Quart request.
    :return: a list of `Menu` objects or dicts with `title`, `path`, `icon`, `items`.
    """


# 4. Retiring -----------------------------------------------------------------------------


@hookspec
def courtyard_shutdown(ctx: PluginContext) -> None:
    """Release what `courtyard_startup` acquired.

    Called exactly once per generation for every plugin whose startup succeeded: when the
    generation is replaced by a reload (after its in-flight requests have finished) or when
    the server stops. Called in reverse dependency order. May be a coroutine function.
    Errors are logged and do not stop other plugins' shutdown.

    :param ctx: the plugin's context.
    """


# Outside the server ----------------------------------------------------------------------


@hookspec
def courtyard_commands(ctx: PluginContext) -> click.Command | list[click.Command] | None:
    """Return click commands to add to the `courtyard` command line.

    A command named `queues` becomes `courtyard queues ...`. A name already taken by the
    runtime or by another plugin is reported and skipped.

    :param ctx: the plugin's context (no server is running).
    :return: a click command or group, a list of them, or None.
    """
