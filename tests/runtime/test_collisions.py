"""Two claims on one path: the later plugin is excluded, and the message names both."""

import pytest
from courtyard.generation import BuildError
from courtyard.testing import write_plugin


def route_plugin(prefix: str | None, rule: str = "/", methods: str = "GET") -> str:
    prefix_arg = "" if prefix is None else f", url_prefix={prefix!r}"
    return (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        f"    bp = Blueprint('r', __name__{prefix_arg})\n"
        f"    bp.route({rule!r}, methods=[{methods!r}])(lambda: {{'owner': ctx.name}})\n"
        "    return bp\n"
    )


async def states(rt):
    return {
        p["name"]: (p["status"], p["error"]) for p in (await rt.client.get("/api/plugins/")).json()
    }


async def test_same_base_excludes_the_later(courtyard, plugin_dir):
    write_plugin(plugin_dir, "first", 'base = "/shared"\n')
    write_plugin(plugin_dir, "second", 'base = "/shared"\n')
    rt = await courtyard(entry_points=False)
    assert (await states(rt))["second"] == ("failed", "base /shared is already claimed by first")


async def test_same_menu_path_excludes_the_later(courtyard, plugin_dir):
    menu = '[[menus]]\ntitle = "M"\npath = "/place"\n'
    write_plugin(plugin_dir, "first", menu)
    write_plugin(plugin_dir, "second", menu)
    rt = await courtyard(entry_points=False)
    assert (await states(rt))["second"] == (
        "failed",
        "menu path /place is already claimed by first",
    )


async def test_same_absolute_route_excludes_the_later_and_its_dependents(courtyard, plugin_dir):
    write_plugin(plugin_dir, "alpha", "", route_plugin("/queue", "/add", "POST"))
    write_plugin(plugin_dir, "beta", "", route_plugin("/queue", "/add", "POST"))
    write_plugin(plugin_dir, "gamma", 'dependencies = ["beta"]\n')
    rt = await courtyard(entry_points=False)
    found = await states(rt)
    assert found["beta"] == ("failed", "route POST /queue/add is already claimed by alpha")
    assert found["gamma"] == ("failed", "dependency beta failed")
    answer = await rt.client.post("/queue/add")
    assert answer.json() == {"owner": "alpha"}


async def test_same_rule_with_other_methods_is_fine(courtyard, plugin_dir):
    write_plugin(plugin_dir, "getter", "", route_plugin("/thing", "/", "GET"))
    write_plugin(plugin_dir, "poster", "", route_plugin("/thing", "/", "POST"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/thing/")).json() == {"owner": "getter"}
    assert (await rt.client.post("/thing/")).json() == {"owner": "poster"}


@pytest.mark.parametrize(
    "prefix", ["/api/health", "/api/plugins", "/api/apps", "/.well-known", "/api/docs"]
)
async def test_reserved_core_paths_cannot_be_claimed(courtyard, plugin_dir, prefix):
    write_plugin(plugin_dir, "squatter", "", route_plugin(prefix, "/x"))
    rt = await courtyard(entry_points=False)
    status, error = (await states(rt))["squatter"]
    assert status == "failed"
    assert error == f"route {prefix}/x is reserved by the runtime"


async def test_plugins_may_own_documented_api_paths(courtyard, plugin_dir):
    write_plugin(plugin_dir, "cli-api", "", route_plugin("/api/cli", "/queues"))
    write_plugin(plugin_dir, "v1-api", "", route_plugin("/api/v1", "/releases"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/api/cli/queues")).json() == {"owner": "cli-api"}
    assert (await rt.client.get("/api/v1/releases")).json() == {"owner": "v1-api"}


async def test_reserved_base_is_a_manifest_error(courtyard, plugin_dir):
    write_plugin(plugin_dir, "api", 'base = "/api"\n')
    rt = await courtyard(entry_points=False)
    status, error = (await states(rt))["api"]
    assert status == "failed" and "/api is reserved by the runtime" in error


async def test_strict_mode_turns_a_collision_into_a_refusal(courtyard, plugin_dir):
    write_plugin(plugin_dir, "first", 'base = "/shared"\n')
    write_plugin(plugin_dir, "second", 'base = "/shared"\n')
    with pytest.raises(BuildError, match="second: base /shared is already claimed by first"):
        await courtyard(entry_points=False, strict=True)


async def test_two_plugins_may_use_the_same_blueprint_name(courtyard, plugin_dir):
    write_plugin(plugin_dir, "one", "", route_plugin(None))
    write_plugin(plugin_dir, "two", "", route_plugin(None))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/one/")).json() == {"owner": "one"}
    assert (await rt.client.get("/two/")).json() == {"owner": "two"}


async def test_root_base_mounts_at_the_root(courtyard, plugin_dir):
    write_plugin(plugin_dir, "rooted", 'base = "/"\n', route_plugin(None, "/landing"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/landing")).json() == {"owner": "rooted"}


async def test_routes_differing_only_in_variable_names_collide(courtyard, plugin_dir):
    write_plugin(plugin_dir, "by-id", "", route_plugin("/items", "/<id>"))
    write_plugin(plugin_dir, "by-name", "", route_plugin("/items", "/<name>"))
    write_plugin(plugin_dir, "by-int", "", route_plugin("/items", "/<int:number>"))
    rt = await courtyard(entry_points=False)
    found = await states(rt)
    assert found["by-name"] == ("failed", "route GET /items/<name> is already claimed by by-id")
    assert found["by-int"] == ("loaded", None)


async def test_paths_that_only_start_like_reserved_ones_are_fine(courtyard, plugin_dir):
    write_plugin(plugin_dir, "healthz", "", route_plugin("/api/healthz"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/api/healthz/")).json() == {"owner": "healthz"}
