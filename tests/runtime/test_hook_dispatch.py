"""courtyard.hooks: the one way the runtime calls plugin hooks, without a server."""

from __future__ import annotations

import asyncio
import logging
import threading
import types
from dataclasses import dataclass
from typing import Any

import pytest
from courtyard.hooks import Failure, Hooks, as_list
from courtyard_sdk import Blueprint, hookimpl, only_under


@dataclass
class Plugin:
    name: str
    module: types.ModuleType | None
    ctx: Any


def plugin(hooks: Hooks, name: str, **functions: Any) -> Plugin:
    """A plugin module holding `functions` (marked as hook implementations), registered."""
    module = types.ModuleType(name)
    for hook, function in functions.items():
        function.__name__ = hook
        setattr(module, hook, hookimpl(function))
    hooks.register(module, name)
    return Plugin(name, module, ctx=f"ctx of {name}")


def test_as_list_normalises_none_an_item_and_a_list():
    bp = Blueprint("x", __name__)
    assert as_list(None, Blueprint, "courtyard_routes") == []
    assert as_list(bp, Blueprint, "courtyard_routes") == [bp]
    assert as_list((bp, bp), Blueprint, "courtyard_routes") == [bp, bp]
    assert as_list({"title": "t"}, (str, dict), "courtyard_menus") == [{"title": "t"}]
    with pytest.raises(TypeError) as raised:
        as_list(42, Blueprint, "courtyard_routes")
    assert str(raised.value) == "courtyard_routes must return Blueprint objects, got int"
    with pytest.raises(TypeError, match="must return str or dict objects, got int"):
        as_list([1], (str, dict), "courtyard_menus")


def test_call_reaches_one_plugin_with_its_own_context_and_the_arguments_it_declares():
    hooks = Hooks()
    a = plugin(hooks, "a", courtyard_menus=lambda request: [f"a saw {request}"])
    b = plugin(hooks, "b", courtyard_menus=lambda ctx: [f"b is {ctx}"])
    quiet = plugin(hooks, "quiet")
    assert hooks.call(a, "courtyard_menus", request="GET /") == ["a saw GET /"]
    assert hooks.call(b, "courtyard_menus", request="GET /") == ["b is ctx of b"]
    assert hooks.call(quiet, "courtyard_menus", request="GET /") is None
    assert hooks.implemented_by(a) == ["courtyard_menus"]
    assert hooks.implemented_by(quiet) == []


def test_a_plugin_registered_later_is_not_reached_through_an_earlier_plugins_caller():
    hooks = Hooks()
    a = plugin(hooks, "a", courtyard_provides=lambda: "a")
    assert hooks.call(a, "courtyard_provides") == "a"
    plugin(hooks, "b", courtyard_provides=lambda: "b")
    assert hooks.call(a, "courtyard_provides") == "a"


def test_a_module_that_fails_registration_is_left_unregistered():
    hooks = Hooks()
    module = types.ModuleType("bad")

    @hookimpl
    def courtyard_startup(ctx, unknown):  # an argument the hookspec does not have
        pass

    module.courtyard_startup = courtyard_startup
    with pytest.raises(Exception, match="unknown"):
        hooks.register(module, "bad")
    assert not hooks.pm.is_registered(module)


def test_each_calls_in_the_order_given_and_contains_each_failure():
    hooks = Hooks()
    called = []

    def routes(ctx):
        called.append(ctx)
        return None if ctx == "ctx of none" else Blueprint(ctx.replace(" ", "_"), __name__)

    def boom(ctx):
        called.append(ctx)
        raise RuntimeError("no")

    plugins = [
        plugin(hooks, "late", courtyard_routes=routes),
        plugin(hooks, "boom", courtyard_routes=boom),
        plugin(hooks, "wrong", courtyard_routes=lambda: 42),
        plugin(hooks, "none", courtyard_routes=routes),
    ]
    outcomes = list(hooks.each(plugins, "courtyard_routes", Blueprint))
    assert called == ["ctx of late", "ctx of boom", "ctx of none"]
    assert [o.plugin.name for o in outcomes] == ["late", "boom", "wrong", "none"]
    assert [len(o.items) for o in outcomes] == [1, 0, 0, 0]
    assert outcomes[0].failure is None and outcomes[3].failure is None
    assert outcomes[1].failure.reason == "courtyard_routes raised RuntimeError: no"
    assert outcomes[2].failure.reason == (
        "courtyard_routes raised TypeError: courtyard_routes must return Blueprint objects, got int"
    )


async def test_each_async_awaits_coroutine_functions_and_plain_ones_alike():
    hooks = Hooks()

    async def menus(ctx, request):
        await asyncio.sleep(0)
        return {"title": ctx, "path": request}

    plugins = [
        plugin(hooks, "async", courtyard_menus=menus),
        plugin(hooks, "sync", courtyard_menus=lambda request: [{"path": request}]),
    ]
    outcomes = [o async for o in hooks.each_async(plugins, "courtyard_menus", dict, request="/x")]
    assert [o.items for o in outcomes] == [
        [{"title": "ctx of async", "path": "/x"}],
        [{"path": "/x"}],
    ]


async def test_lifecycle_runs_sync_hooks_in_a_thread_and_contains_failures_and_timeouts():
    hooks = Hooks()
    threads = []

    async def slow(ctx):
        await asyncio.sleep(5)

    ok = plugin(hooks, "ok", courtyard_startup=lambda: threads.append(threading.current_thread()))
    bad = plugin(hooks, "bad", courtyard_startup=lambda: 1 / 0)
    late = plugin(hooks, "late", courtyard_startup=slow)
    none = plugin(hooks, "none")
    assert await hooks.lifecycle(ok, "courtyard_startup", 1) is None
    assert threads and threads[0] is not threading.current_thread()
    failure = await hooks.lifecycle(bad, "courtyard_startup", 1)
    assert isinstance(failure, Failure) and isinstance(failure.error, ZeroDivisionError)
    assert failure.reason == "courtyard_startup raised ZeroDivisionError: division by zero"
    failure = await hooks.lifecycle(late, "courtyard_startup", 0.05)
    assert isinstance(failure.error, TimeoutError)
    assert failure.reason == "courtyard_startup exceeded 0.05 s"
    assert await hooks.lifecycle(none, "courtyard_shutdown", 1) is None


async def _make_response(value: Any) -> str:
    return f"made({value})"


@pytest.mark.parametrize("trace", [False, True])
async def test_chain_first_answer_wins_and_fold_passes_the_replaced_value_on(trace, caplog):
    hooks = Hooks(trace=trace)
    seen = []

    async def gate(ctx, request):
        seen.append(ctx)
        return "blocked" if request == "block" else None

    def later(request, ctx):  # any order, as pluggy allows
        seen.append(ctx)
        return "late answer" if request == "late" else None

    async def replace(response):
        return "replaced" if response == "original" else None

    def mark(ctx, response):
        seen.append(f"{ctx} got {response}")

    plugins = [
        plugin(hooks, "gate", courtyard_request=gate),
        plugin(hooks, "other"),
        plugin(hooks, "later", courtyard_request=later, courtyard_response=mark),
        plugin(hooks, "replacer", courtyard_response=replace),
    ]
    requests = hooks.chain(plugins, "courtyard_request")
    assert len(requests) == 2
    with caplog.at_level(logging.INFO, logger="courtyard.hooks"):
        assert await requests.first(request="block") == "blocked"
        assert seen == ["ctx of gate"]
        assert await requests.first(request="late") == "late answer"
        assert await requests.first(request="pass") is None
        responses = hooks.chain(reversed(plugins), "courtyard_response")
        answer = await responses.fold("response", _make_response, request="r", response="original")
    assert answer == "made(replaced)"
    assert seen[-1] == "ctx of later got made(replaced)"
    assert not hooks.chain(plugins[1:2], "courtyard_request")
    traced = [r.getMessage() for r in caplog.records if r.name == "courtyard.hooks"]
    if trace:  # every call of the request path is logged
        assert [line.split(" ")[:2] for line in traced] == [
            ["courtyard_request", "[gate]"],
            ["courtyard_request", "[gate]"],
            ["courtyard_request", "[later]"],
            ["courtyard_request", "[gate]"],
            ["courtyard_request", "[later]"],
            ["courtyard_response", "[replacer]"],
            ["courtyard_response", "[later]"],
        ]
        assert "request='late'" in traced[2]
    else:
        assert traced == []


@pytest.mark.parametrize("trace", [False, True])
async def test_chain_skips_an_implementation_marked_for_other_paths(trace):
    hooks = Hooks(trace=trace)
    seen = []

    def mine(request):
        seen.append(("mine", request.path))

    def everywhere(request):
        seen.append(("everywhere", request.path))

    plugins = [
        plugin(hooks, "api", courtyard_request=only_under("/api/v1", "/v1")(mine)),
        plugin(hooks, "all", courtyard_request=everywhere),
        plugin(
            hooks, "root", courtyard_request=only_under("/")(lambda request: everywhere(request))
        ),
    ]
    requests = hooks.chain(plugins, "courtyard_request")
    for path in ("/api/v1", "/api/v1/jobs", "/api/v10", "/v1/x", "/other"):
        await requests.first(request=types.SimpleNamespace(path=path))
    assert [name for name, path in seen if name == "mine"] == ["mine"] * 3
    assert [path for name, path in seen if name == "mine"] == ["/api/v1", "/api/v1/jobs", "/v1/x"]
    assert len([name for name, _ in seen if name == "everywhere"]) == 10  # "/" is every path


@pytest.mark.parametrize("prefix", ["api", "/api/", ""])
def test_only_under_refuses_a_prefix_that_is_not_an_absolute_path(prefix):
    with pytest.raises(ValueError, match="must start with /"):
        only_under(prefix)
    with pytest.raises(ValueError, match="at least one"):
        only_under()
