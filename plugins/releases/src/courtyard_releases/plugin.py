"""The releases plugin's hooks: Stella Ops' release orchestrator API under `/api/v1`.

`courtyard_request` refuses the routes of a plugin the caller's tenant disabled.
`courtyard_startup` loads the sealing key (target credentials, signing keys) into the
generation's state (`ctx.state[Sealer]`); the routes reach the database, the audit log and
the sealer through `common.Api`. `courtyard_response` puts the errors the runtime answers
before a route runs (a bad credential, an unknown path, a wrong method) under `/api/v1`
into the API's envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from courtyard_sdk import Blueprint, PluginContext, Response, hookimpl, only_under

from . import (
    agent_routes,
    agents,
    components,
    deployments,
    environments,
    evidence,
    page,
    plugin_registry,
    policies,
    promotions,
    releases,
    reports,
    targets,
)
from .blobs import BlobStore
from .common import Api
from .crypto import Sealer
from .deploy import Runner, fail_unfinished
from .envelope import PREFIX, rewrap
from .plugin_registry import Disabled, refuse_disabled


@hookimpl
def courtyard_routes(ctx: PluginContext) -> list[Blueprint]:
    """The `/api/v1` blueprints."""
    api = Api(ctx)
    disabled = ctx.state.setdefault(Disabled, Disabled(api))
    return [
        plugin_registry.routes(api, disabled),
        environments.routes(api),
        targets.routes(api),
        agents.routes(api),
        components.routes(api, BlobStore(ctx.data_dir)),
        releases.routes(api),
        promotions.routes(api),
        policies.routes(api),
        evidence.routes(api),
        deployments.routes(api),
        reports.routes(api),
        page.routes(api),
        agent_routes.routes(api, BlobStore(ctx.data_dir)),
    ]


@hookimpl
async def courtyard_startup(ctx: PluginContext) -> None:
    """Load (or make, once) the key that seals secrets at rest; mark failed the
    deployments a previous process left unfinished; get ready to run jobs."""
    ctx.state[Sealer] = Sealer.load(ctx.settings.get("secret_key"), ctx.data_dir)
    ctx.state[Runner] = Runner(BlobStore(ctx.data_dir))
    if failed := await fail_unfinished(Api(ctx)):
        ctx.logger.warning("%d unfinished deployment(s) marked failed", failed)


@hookimpl
async def courtyard_shutdown(ctx: PluginContext) -> None:
    """Let the running deployments finish."""
    runner = ctx.state.pop(Runner, None)
    if runner is not None:
        await runner.close()


@hookimpl
def courtyard_request(ctx: PluginContext) -> Awaitable[None] | None:
    """Refuse the routes of a plugin the caller's tenant disabled (plugin_registry.py)."""
    return refuse_disabled(ctx.state[Disabled])


@hookimpl
@only_under(PREFIX)
async def courtyard_response(ctx: PluginContext, response: Response) -> Response | None:
    """Every error under `/api/v1` in the API's envelope."""
    return await rewrap(response)


@hookimpl
def courtyard_commands(ctx: PluginContext) -> Any:
    """`courtyard releases-agent`: the deployment agent."""
    from .agent_cli import agent_command

    return agent_command
