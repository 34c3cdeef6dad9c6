"""`ctx.state`: a plugin's per-generation objects, keyed by class, held by its context."""

import dataclasses
import logging
import types
from pathlib import Path

import pytest
from courtyard.testing import write_plugin
from courtyard_sdk import PluginContext, PluginState, parse_manifest


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start


class Other:
    pass


def context(name: str = "demo") -> PluginContext:
    return PluginContext(
        name=name,
        manifest=parse_manifest(f'name = "{name}"'),
        settings={},
        logger=logging.getLogger(f"courtyard.plugin.{name}"),
        root=Path("."),
        _data_dir=Path("."),
    )


# The object itself ----------------------------------------------------------------------


def test_an_object_stored_under_its_class_comes_back():
    state = context().state
    counter = Counter()
    state[Counter] = counter
    assert state[Counter] is counter
    assert state.get(Counter) is counter
    assert Counter in state and Other not in state
    assert len(state) == 1


def test_a_missing_object_names_the_plugin_and_the_class():
    state = context("hello").state
    with pytest.raises(KeyError, match=r"plugin hello has no Counter in ctx\.state"):
        state[Counter]
    assert state.get(Counter) is None
    assert state.get(Counter, "none") == "none"


def test_the_object_must_be_an_instance_of_its_key():
    state = context().state
    with pytest.raises(TypeError, match=r"ctx\.state\[Counter\] must be a Counter, got Other"):
        state[Counter] = Other()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="keyed by classes"):
        state["counter"] = Counter()  # type: ignore[index]
    assert len(state) == 0


def test_a_subclass_instance_is_accepted_under_its_base():
    class Fancy(Counter):
        pass

    state = context().state
    state[Counter] = Fancy()
    assert isinstance(state[Counter], Fancy)
    assert Fancy not in state  # the key is the class given, not the object's


def test_setdefault_stores_once():
    state = context().state
    first = state.setdefault(Counter, Counter(1))
    second = state.setdefault(Counter, Counter(2))
    assert first is second and first.value == 1
    with pytest.raises(TypeError):
        state.setdefault(Other, Counter())  # type: ignore[arg-type]


def test_pop_and_del_forget():
    state = context().state
    state[Counter] = counter = Counter()
    assert state.pop(Counter) is counter
    assert state.pop(Counter, None) is None
    with pytest.raises(KeyError, match="has no Counter"):
        state.pop(Counter)
    state[Counter] = Counter()
    del state[Counter]
    with pytest.raises(KeyError, match="has no Counter"):
        del state[Counter]
    assert Counter not in state


def test_each_context_has_its_own_state():
    one, two = context("one"), context("two")
    one.state[Counter] = Counter(1)
    assert Counter not in two.state
    assert isinstance(one.state, PluginState) and one.state is not two.state
    # A copy of a context is another context: it starts empty.
    assert Counter not in dataclasses.replace(one).state
    assert repr(one.state) == "<PluginState of one: Counter>"
    assert "state" not in repr(one)


def test_the_state_cannot_be_replaced():
    ctx = context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.state = PluginState()  # type: ignore[misc]


# In a running Courtyard ------------------------------------------------------------------

STATEFUL = """
import itertools
from dataclasses import dataclass, field

from courtyard_sdk import Blueprint, PluginContext, hookimpl

GENERATIONS = itertools.count(1)


@dataclass
class State:
    generation: int
    hits: int = 0
    seen_by_request_hook: int = 0


@hookimpl
def courtyard_startup(ctx: PluginContext) -> None:
    ctx.state[State] = State(generation=next(GENERATIONS))


@hookimpl
def courtyard_request(ctx: PluginContext, request) -> None:
    state = ctx.state.get(State)
    if state is not None:
        state.seen_by_request_hook += 1


@hookimpl
def courtyard_routes(ctx: PluginContext) -> Blueprint:
    bp = Blueprint("stateful", __name__)

    @bp.get("/")
    async def index() -> dict:
        state = ctx.state[State]  # set by courtyard_startup, after this hook ran
        state.hits += 1
        return {
            "generation": state.generation,
            "hits": state.hits,
            "requests": state.seen_by_request_hook,
        }

    return bp
"""


async def test_state_set_at_startup_is_seen_by_routes_and_hooks(courtyard, plugin_dir):
    write_plugin(plugin_dir, "stateful", "", STATEFUL)
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/stateful/")).json() == {"generation": 1, "hits": 1, "requests": 1}
    assert (await rt.client.get("/stateful/")).json() == {"generation": 1, "hits": 2, "requests": 2}


async def test_a_reload_starts_with_fresh_state(courtyard, plugin_dir):
    write_plugin(plugin_dir, "stateful", "", STATEFUL)
    rt = await courtyard(entry_points=False)
    old = rt.dispatcher.current.record("stateful")
    for _ in range(3):
        await rt.client.get("/stateful/")
    assert (await rt.reload()).status_code == 200
    new = rt.dispatcher.current.record("stateful")
    assert new.ctx is not old.ctx and new.ctx.state is not old.ctx.state
    assert (await rt.client.get("/stateful/")).json()["hits"] == 1
    # Each generation imports the plugin afresh, so each has its own State class too.
    assert old.ctx.state[old.module.State].hits == 3
    assert new.ctx.state[new.module.State].hits == 1
    assert old.module.State not in new.ctx.state


async def test_two_plugins_keep_their_states_apart(courtyard, plugin_dir):
    # Both key their state by the same class, types.SimpleNamespace.
    code = """
import types
from courtyard_sdk import Blueprint, hookimpl

@hookimpl
def courtyard_startup(ctx):
    ctx.state[types.SimpleNamespace] = types.SimpleNamespace(owner=ctx.name)

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("main", __name__)
    bp.get("/")(lambda: {"owner": ctx.state[types.SimpleNamespace].owner})
    return bp
"""
    write_plugin(plugin_dir, "left", "", code)
    write_plugin(plugin_dir, "right", "", code)
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/left/")).json() == {"owner": "left"}
    assert (await rt.client.get("/right/")).json() == {"owner": "right"}
    left = rt.dispatcher.current.record("left").ctx.state[types.SimpleNamespace]
    right = rt.dispatcher.current.record("right").ctx.state[types.SimpleNamespace]
    assert left is not right


async def test_a_route_reading_state_that_was_never_set_answers_500(courtyard, plugin_dir):
    code = """
from courtyard_sdk import Blueprint, hookimpl

class Missing:
    pass

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("main", __name__)
    bp.get("/")(lambda: {"found": ctx.state[Missing] is not None})
    return bp
"""
    write_plugin(plugin_dir, "forgetful", "", code)
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/forgetful/")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "INTERNAL_ERROR"


async def test_the_example_of_writing_a_plugin_works(courtyard, plugin_dir):
    docs = (Path(__file__).parents[2] / "docs" / "plugins" / "writing-a-plugin.md").read_text()
    section = docs[docs.index("### Keeping state") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    manifest = '[config.greeting]\ntype = "string"\ndefault = "Hello"\n'
    write_plugin(plugin_dir, "counting", manifest, code)
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/counting/ada")).json() == {"message": "Hello, ada", "times": 1}
    assert (await rt.client.get("/counting/ada")).json()["times"] == 2
    await rt.reload()
    assert (await rt.client.get("/counting/ada")).json()["times"] == 1
