"""The runners plugin's hooks (RustCI's runner API).

Each generation gets its own `Service` (`service.py`), made by `courtyard_startup` and
kept in `ctx.state[State]`; routes, built before startup, reach it through the state.
`courtyard_response` puts every error answered under `/api/runners` (a refused
credential, the Origin check, a rate limit) in RustCI's envelope. `courtyard runner`
(the agent) comes from `agent/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from courtyard_sdk import (
    ApiError,
    Blueprint,
    PluginContext,
    Request,
    Response,
    hookimpl,
    only_under,
)

from . import agent_routes, page, routes
from .errors import PREFIX, envelope
from .limits import Limiter
from .service import Service
from .states import Options


@dataclass(eq=False)
class State:
    """One generation's service and rate limiter."""

    service: Service | None = None
    limiter: Limiter | None = None


def _state(ctx: PluginContext) -> State:
    return ctx.state.setdefault(State, State())


def _audit(ctx: PluginContext) -> Any:
    """The runtime's audit log, or None where the runtime gives none."""
    try:
        return ctx.audit if callable(ctx.audit.record) else None
    except RuntimeError:
        return None


def _events(ctx: PluginContext) -> Any:
    """The runtime's event bus, or None where the runtime gives none."""
    try:
        return ctx.events if callable(ctx.events.publish) else None
    except RuntimeError:
        return None


@hookimpl
def courtyard_routes(ctx: PluginContext) -> list[Blueprint]:
    """RustCI's runner API, the agent protocol and the page."""
    state = _state(ctx)

    def service() -> Service:
        if state.service is None:
            raise ApiError(503, "RUNNERS_UNAVAILABLE", "the runners plugin is not started")
        return state.service

    return [
        routes.blueprint(service, lambda: ctx.events, lambda: _audit(ctx)),
        agent_routes.blueprint(service),
        page.blueprint(service),
    ]


@hookimpl
async def courtyard_startup(ctx: PluginContext) -> None:
    """Make the service, start its sweeper and its listener on the event bus."""
    state = _state(ctx)
    settings = ctx.settings
    options = Options(
        heartbeat_seconds=float(settings["heartbeat_seconds"]),
        missed_heartbeats=int(settings["missed_heartbeats"]),
        sweep_seconds=float(settings["sweep_seconds"]),
        log_retention_seconds=float(settings["log_retention_seconds"]),
    )
    bus = _events(ctx)
    publish = None if bus is None else bus.publish
    service = Service(ctx.db, options, ctx.logger, publish)
    service.start(None if bus is None else _listener(bus, service))
    state.service = service
    if settings["rate_limits"]:
        state.limiter = Limiter()
    ctx.logger.info(
        "heartbeats every %ss, inactive after %d missed; rate limits %s",
        options.heartbeat_seconds,
        options.missed_heartbeats,
        "on" if state.limiter else "off",
    )


def _listener(bus: Any, service: Service) -> Any:
    """Wake local waiters for changes made on other instances (and on this one: a
    second wake-up costs a look, never a mistake)."""

    async def listen() -> None:
        last: str | None = None
        while not service.notifier.closed:
            try:
                async with bus.subscribe(
                    "runners.wake", "runners.logs", last_event_id=last
                ) as events:
                    async for event in events:
                        last = event.id
                        runner_id = (event.data or {}).get("runner_id")
                        if not isinstance(runner_id, str):
                            continue
                        if event.topic == "runners.wake":
                            service.notifier.work(runner_id)
                        else:
                            service.notifier.logs(runner_id)
                return
            except Exception as exc:  # lagged or Redis away: subscribe again
                last = getattr(exc, "last_event_id", last)
                service.log.debug("runners listener: %s; subscribing again", exc)
                await asyncio.sleep(0.5)

    return listen


@hookimpl
async def courtyard_shutdown(ctx: PluginContext) -> None:
    """Wake every long poll and log stream; stop the sweeper."""
    state = ctx.state.pop(State, None)
    if state is not None and state.service is not None:
        await state.service.close()


@hookimpl
@only_under(PREFIX)
def courtyard_request(ctx: PluginContext, request: Request) -> Any:
    """RustCI's rate limits on its documented routes."""
    state = ctx.state.get(State)
    if state is None or state.limiter is None:
        return None
    return state.limiter.check(request)


@hookimpl
@only_under(PREFIX)
async def courtyard_response(ctx: PluginContext, request: Request, response: Response) -> Any:
    """RustCI's envelope for every error under `/api/runners`, whoever answered it; the
    X-RateLimit-* headers of a limited route."""
    state = ctx.state.get(State)
    if state is not None and state.limiter is not None:
        state.limiter.headers(request, response)
    if response.status_code < 400 or response.mimetype != "application/json":
        return None
    with contextlib.suppress(Exception):
        rewritten = envelope(await response.get_json(force=True))
        if rewritten is not None:
            response.set_data(json.dumps(rewritten))
    return None


@hookimpl
def courtyard_commands(ctx: PluginContext) -> Any:
    """`courtyard runner register | start`: the agent."""
    from .agent.cli import runner_command

    return runner_command
