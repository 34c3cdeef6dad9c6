"""The platform plugin's hooks: the go-web-nats platform API, its pipeline on the
queues plugin, and the Projects page.

`courtyard_provides` makes the generation's `State` (kept in `ctx.state`); routes are
built before startup and reach it through `State`. `courtyard_startup` makes the store,
the pipeline (whose consumers lease the platform's tasks through the queues plugin) and,
when enabled, the source watcher; `courtyard_shutdown` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from courtyard_sdk import ApiError, Blueprint, PluginContext, hookimpl

from .artifacts import Artifacts
from .page import page_routes
from .pipeline import Pipeline
from .routes import api_routes
from .service import Platform
from .store import Store
from .watcher import watch_forever


@dataclass(eq=False)
class State:
    """One generation's platform, and its background tasks."""

    platform: Platform | None = None
    watcher: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def _state(ctx: PluginContext) -> State:
    return ctx.state.setdefault(State, State())


@hookimpl
def courtyard_provides(ctx: PluginContext) -> None:
    """Make the generation's state (the plugin offers no service to others)."""
    _state(ctx)


@hookimpl
def courtyard_routes(ctx: PluginContext) -> list[Blueprint]:
    """The API under `/api` and the Projects page at the plugin's base."""
    state = _state(ctx)
    artifacts = Artifacts(ctx.data_dir / "artifacts")

    def platform() -> Platform:
        if state.platform is None:
            raise ApiError(503, "PLATFORM_UNAVAILABLE", "the platform plugin is not started")
        return state.platform

    return [api_routes(platform, artifacts, ctx.events), page_routes()]


@hookimpl
async def courtyard_startup(ctx: PluginContext) -> None:
    """Start the pipeline's consumers (and the watcher, when enabled)."""
    state = _state(ctx)
    store = Store(ctx.db)
    artifacts = Artifacts(ctx.data_dir / "artifacts")

    async def publish(op_id: str) -> None:
        op = await store.op(op_id)
        if op is None:
            return
        try:
            await ctx.events.publish(f"platform.op.{op_id}", op)
        except Exception as exc:  # progress events are a convenience: the op is stored
            ctx.logger.warning("cannot publish the progress of %s: %r", op_id, exc)

    async def audit(action: str, target: str, details: dict[str, Any]) -> None:
        try:
            await ctx.audit.record(action, target=target, details=details)
        except Exception as exc:  # the operation is stored: the audit entry is extra
            ctx.logger.warning("cannot record %s of %s: %r", action, target, exc)

    pipeline = Pipeline(
        store,
        artifacts,
        ctx.get_plugin("queues"),
        ctx.settings,
        ctx.logger,
        ctx.data_dir,
        lambda: ctx.get_plugin("vaults"),
        publish,
        audit,
    )
    state.platform = Platform(store, pipeline, float(ctx.settings["wait_seconds"]))
    pipeline.start()
    if ctx.settings["watcher"]:
        base = ctx.settings["public_url"] or "http://127.0.0.1:8000"
        state.watcher = asyncio.create_task(
            watch_forever(state.platform, artifacts, base, ctx.settings["watcher_seconds"],
                          state.stop, ctx.logger)
        )  # fmt: skip
    ctx.logger.info(
        "%d pipeline consumer(s), watcher %s",
        ctx.settings["workers"],
        "on" if ctx.settings["watcher"] else "off",
    )


@hookimpl
async def courtyard_shutdown(ctx: PluginContext) -> None:
    """Stop the watcher and the consumers (a step cut short is run again elsewhere)."""
    state = ctx.state.pop(State, None)
    if state is None:
        return
    state.stop.set()
    if state.watcher is not None:
        state.watcher.cancel()
        with contextlib.suppress(BaseException):
            await state.watcher
    if state.platform is not None:
        await state.platform.pipeline.close()
