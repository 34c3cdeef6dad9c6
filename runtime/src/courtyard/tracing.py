"""`COURTYARD_TRACE_HOOKS=1`: log every hook call with its plugin, arguments and duration
(pluggy's hook-call monitoring)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pluggy
from courtyard_sdk import PluginContext

log = logging.getLogger("courtyard.hooks")


def _describe(value: Any) -> str:
    return f"<ctx {value.name}>" if isinstance(value, PluginContext) else repr(value)[:80]


def trace(pm: pluggy.PluginManager) -> None:
    """Log each call of `pm`'s hooks at INFO: hook, plugins, arguments, milliseconds.

    For an async implementation the time is that of creating its coroutine; the awaited
    part shows in the lifecycle logs.
    """
    started = threading.local()  # calls nest and run in worker threads too

    def before(hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        stack = started.__dict__.setdefault("stack", [])
        stack.append(time.perf_counter())

    def after(
        outcome: pluggy.Result[Any],
        hook: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        elapsed = (time.perf_counter() - started.stack.pop()) * 1000
        if not impls:  # asked of a plugin that does not implement the hook
            return
        plugins = ",".join(impl.plugin_name for impl in impls) or "-"
        arguments = " ".join(f"{k}={_describe(v)}" for k, v in kwargs.items())
        failed = " raised" if outcome.exception is not None else ""
        log.info("%s [%s] %s %.3f ms%s", hook, plugins, arguments, elapsed, failed)

    pm.add_hookcall_monitoring(before, after)
