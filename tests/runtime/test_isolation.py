"""Ordering and isolation: one plugin's failure never takes down the others."""

import asyncio

import pytest
from courtyard.generation import BuildError
from courtyard.testing import write_plugin


async def status(rt):
    return {
        p["name"]: (p["status"], p["error"]) for p in (await rt.client.get("/api/plugins/")).json()
    }


async def test_broken_import_excludes_only_that_plugin(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello", "broken")
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["hello"] == ("loaded", None)
    assert states["broken"][0] == "failed"
    assert (await rt.client.get("/hello/")).status_code == 200


async def test_cycle_excludes_both_and_names_the_cycle(courtyard, add_fixture_plugins):
    add_fixture_plugins("cycle-a", "cycle-b", "hello")
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["cycle-a"][0] == "failed"
    assert "dependency cycle: cycle-a -> cycle-b -> cycle-a" in states["cycle-a"][1]
    assert states["cycle-b"][0] == "failed"
    assert states["hello"][0] == "loaded"


async def test_missing_dependency_excludes_plugin_and_its_dependents(courtyard, plugin_dir):
    write_plugin(plugin_dir, "needs-ghost", 'dependencies = ["ghost"]\n')
    write_plugin(plugin_dir, "needs-needy", 'dependencies = ["needs-ghost"]\n')
    write_plugin(plugin_dir, "fine")
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["needs-ghost"] == ("failed", "missing dependency: ghost")
    assert states["needs-needy"] == ("failed", "dependency needs-ghost failed")
    assert states["fine"] == ("loaded", None)


async def test_failed_import_takes_its_dependents_along(courtyard, add_fixture_plugins, plugin_dir):
    add_fixture_plugins("broken")
    write_plugin(plugin_dir, "on-broken", 'dependencies = ["broken"]\n')
    write_plugin(plugin_dir, "soft-on-broken", 'optional_dependencies = ["broken"]\n')
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["on-broken"] == ("failed", "dependency broken failed")
    assert states["soft-on-broken"] == ("loaded", None)


async def test_dependencies_start_first_and_optional_ones_order_too(courtyard, plugin_dir):
    code = """
from courtyard_sdk import hookimpl
import os
@hookimpl
def courtyard_startup(ctx):
    with open(os.environ["ORDER_LOG"], "a") as f:
        f.write(ctx.name + "\\n")
"""
    write_plugin(plugin_dir, "a-last", 'dependencies = ["m-middle"]\n', code)
    write_plugin(plugin_dir, "m-middle", 'optional_dependencies = ["z-first", "absent"]\n', code)
    write_plugin(plugin_dir, "z-first", "", code)
    log = plugin_dir.parent / "order.log"
    import os

    os.environ["ORDER_LOG"] = str(log)
    try:
        rt = await courtyard(entry_points=False)
    finally:
        del os.environ["ORDER_LOG"]
    assert log.read_text().split() == ["z-first", "m-middle", "a-last"]
    names = [p["name"] for p in (await rt.client.get("/api/plugins/loaded")).json()]
    assert names == ["z-first", "m-middle", "a-last"]


async def test_startup_that_raises_excludes_plugin_and_dependents(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "bad-start",
        "",
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\nasync def courtyard_startup(ctx):\n    raise ValueError('no db')\n",
    )
    write_plugin(plugin_dir, "after-bad", 'dependencies = ["bad-start"]\n')
    write_plugin(plugin_dir, "ok")
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["bad-start"] == ("failed", "courtyard_startup raised ValueError: no db")
    assert states["after-bad"] == ("failed", "dependency bad-start failed")
    assert states["ok"] == ("loaded", None)


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_startup_timeout_excludes_the_plugin(courtyard, plugin_dir, kind):
    body = (
        "@hookimpl\nasync def courtyard_startup(ctx):\n    await asyncio.sleep(30)\n"
        if kind == "async"
        else "@hookimpl\ndef courtyard_startup(ctx):\n    time.sleep(2)\n"
    )
    write_plugin(
        plugin_dir, "slow", "", "import asyncio, time\nfrom courtyard_sdk import hookimpl\n" + body
    )
    write_plugin(plugin_dir, "quick")
    started = asyncio.get_running_loop().time()
    rt = await courtyard(entry_points=False, startup_timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 1.5
    states = await status(rt)
    assert states["slow"] == ("failed", "courtyard_startup exceeded 0.3 s")
    assert states["quick"] == ("loaded", None)


async def test_strict_mode_refuses_to_start(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello", "broken")
    with pytest.raises(BuildError, match="strict mode: broken: import failed"):
        await courtyard(entry_points=False, strict=True)


async def test_strict_mode_shuts_down_what_it_started(courtyard, plugin_dir, add_fixture_plugins):
    add_fixture_plugins("hello")
    write_plugin(
        plugin_dir,
        "late-fail",
        'dependencies = ["hello"]\n',
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\ndef courtyard_startup(ctx):\n    raise RuntimeError('late')\n",
    )
    with pytest.raises(BuildError, match="late-fail"):
        await courtyard(entry_points=False, strict=True)
    events = (plugin_dir.parent / "data" / "plugin-data" / "hello" / "events.log").read_text()
    assert events.split() == ["startup", "shutdown"]


async def test_a_failure_assembling_the_app_is_a_build_error(courtyard, tmp_path):
    missing = tmp_path / "no-such-scalar.js"
    with pytest.raises(BuildError, match=r"no-such-scalar\.js"):
        await courtyard(entry_points=False, docs_script=str(missing))


async def test_bad_manifest_is_reported_with_the_key(courtyard, plugin_dir):
    write_plugin(plugin_dir, "bad-base", 'base = "/Not Valid"\n')
    (plugin_dir / "not-toml").mkdir()
    (plugin_dir / "not-toml" / "plugin.toml").write_text("name = \n")
    (plugin_dir / "no-manifest").mkdir()
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["bad-base"][0] == "failed" and "base:" in states["bad-base"][1]
    assert "not valid TOML" in states["not-toml"][1]
    assert "missing" in states["no-manifest"][1]


async def test_duplicate_names_first_found_wins(courtyard, tmp_path, plugin_dir):
    second = tmp_path / "second"
    write_plugin(plugin_dir, "twin", 'version = "1.0.0"\n')
    write_plugin(second, "twin", 'version = "2.0.0"\n')
    rt = await courtyard(entry_points=False, plugin_dirs=[plugin_dir, second])
    rows = (await rt.client.get("/api/plugins/")).json()
    assert [(r["version"], r["status"]) for r in rows] == [
        ("1.0.0", "loaded"),
        ("2.0.0", "disabled"),
    ]
    assert str(plugin_dir / "twin") in rows[1]["error"]


async def test_directory_plugin_shadows_installed_one(courtyard, plugin_dir, installed_plugin):
    write_plugin(plugin_dir, "fixture-ep", 'version = "9.0.0"\n')
    rt = await courtyard()
    rows = [r for r in (await rt.client.get("/api/plugins/")).json() if r["name"] == "fixture-ep"]
    assert [(r["source"], r["status"]) for r in rows] == [
        ("directory", "loaded"),
        ("entry point", "disabled"),
    ]
    assert rows[1]["error"].startswith("shadowed: fixture-ep is already provided by")


async def test_a_deliberate_override_is_fine_in_strict_mode(
    courtyard, plugin_dir, installed_plugin
):
    write_plugin(plugin_dir, "fixture-ep", 'version = "9.0.0"\n')
    rt = await courtyard(strict=True)
    assert (await rt.client.get("/api/health/ready")).status_code == 200


async def test_installed_entry_point_plugin_serves(courtyard, installed_plugin):
    rt = await courtyard()
    assert (await rt.client.get("/fixture-ep/")).json() == {"installed": True}
    row = next(
        r for r in (await rt.client.get("/api/plugins/")).json() if r["name"] == "fixture-ep"
    )
    assert row["source"] == "entry point"
    assert row["path"] == str(installed_plugin / "courtyard_fixture_ep")


async def test_unmet_requirement_is_a_clear_load_error(courtyard, plugin_dir):
    write_plugin(plugin_dir, "needs-lib", 'requires = ["surely-not-installed-xyz>=1"]\n')
    write_plugin(plugin_dir, "needs-new-quart", 'requires = ["quart>=999"]\n')
    write_plugin(plugin_dir, "has-lib", 'requires = ["quart>=0.1", "pluggy"]\n')
    rt = await courtyard(entry_points=False)
    states = await status(rt)
    assert states["needs-lib"] == (
        "failed",
        "unmet requirements: surely-not-installed-xyz>=1 (not installed)",
    )
    assert "quart>=999 (found " in states["needs-new-quart"][1]
    assert states["has-lib"] == ("loaded", None)


async def test_disabled_by_manifest_or_settings(courtyard, add_fixture_plugins, plugin_dir):
    add_fixture_plugins("hello")
    write_plugin(plugin_dir, "off", "enabled = false\n")
    rt = await courtyard(entry_points=False, plugins={"hello": {"enabled": False}})
    states = await status(rt)
    assert states["off"] == ("disabled", None)
    assert states["hello"] == ("disabled", None)
    assert (await rt.client.get("/hello/")).status_code == 404


async def test_a_disabled_dependency_is_named_as_such(courtyard, add_fixture_plugins, plugin_dir):
    add_fixture_plugins("hello", "@acme/greeter")
    write_plugin(plugin_dir, "third", 'dependencies = ["@acme/greeter"]\n')
    rt = await courtyard(entry_points=False, plugins={"hello": {"enabled": False}})
    states = await status(rt)
    assert states["@acme/greeter"] == ("failed", "dependency hello is disabled")
    assert states["third"] == ("failed", "dependency @acme/greeter failed")


async def test_enabled_must_be_a_boolean(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello")
    with pytest.raises(BuildError, match="enabled: must be true or false"):
        await courtyard(entry_points=False, plugins={"hello": {"enabled": "false"}})


async def test_only_plugins_disables_the_rest(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello", "broken")
    rt = await courtyard(entry_points=False, only_plugins=["hello"])
    assert (await status(rt))["broken"] == ("disabled", None)


async def test_plugin_settings_are_validated_and_defaulted(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello")
    rt = await courtyard(entry_points=False, plugins={"hello": {"greeting": "hey", "times": 2}})
    assert (await rt.client.get("/hello/")).json() == {"message": "hey hey"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"times": 0}, "times: Input should be greater than or equal to 1"),
        ({"times": "2"}, "times: Input should be a valid integer"),
        ({"colour": "red"}, "colour: unknown setting"),
    ],
)
async def test_bad_plugin_settings_refuse_the_start_naming_plugin_and_key(
    courtyard, add_fixture_plugins, values, expected
):
    add_fixture_plugins("hello")
    with pytest.raises(BuildError, match=f"^plugin hello: invalid settings: {expected}"):
        await courtyard(entry_points=False, plugins={"hello": values})


async def test_bad_settings_for_a_plugin_added_later_exclude_it(
    courtyard, add_fixture_plugins, plugin_dir
):
    rt = await courtyard(entry_points=False, plugins={"hello": {"times": 0}})
    add_fixture_plugins("hello")
    body = (await rt.reload()).json()
    assert body["failed"] == [
        {
            "name": "hello",
            "error": "plugin hello: invalid settings: "
            "times: Input should be greater than or equal to 1",
        }
    ]


async def test_two_plugins_never_clash_in_sys_modules(courtyard, plugin_dir):
    for name, word in [("one", "uno"), ("two", "dos")]:
        root = write_plugin(plugin_dir, name, 'module = "pkg"\n')
        (root / "pkg").mkdir()
        (root / "pkg" / "__init__.py").write_text(
            "from courtyard_sdk import Blueprint, hookimpl\nfrom .util import WORD\n"
            "@hookimpl\ndef courtyard_routes(ctx):\n"
            "    bp = Blueprint('main', __name__)\n"
            "    bp.get('/')(lambda: {'word': WORD})\n"
            "    return bp\n"
        )
        (root / "pkg" / "util.py").write_text(f"WORD = {word!r}\n")
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/one/")).json() == {"word": "uno"}
    assert (await rt.client.get("/two/")).json() == {"word": "dos"}


async def test_reload_picks_up_changed_code_at_once(courtyard, plugin_dir):
    code = (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('v', __name__)\n"
        "    bp.get('/')(lambda: {'v': 'VERSION'})\n"
        "    return bp\n"
    )
    write_plugin(plugin_dir, "edit", "", code.replace("VERSION", "v1"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/edit/")).json() == {"v": "v1"}
    # Same size, same second: a cached .pyc must not hide the change.
    (plugin_dir / "edit" / "plugin.py").write_text(code.replace("VERSION", "v2"))
    await rt.reload()
    assert (await rt.client.get("/edit/")).json() == {"v": "v2"}
    assert not (plugin_dir / "edit" / "__pycache__").exists()


async def test_get_plugin_only_reaches_declared_dependencies(
    courtyard, plugin_dir, add_fixture_plugins
):
    add_fixture_plugins("hello")
    write_plugin(
        plugin_dir,
        "nosy",
        "",
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\ndef courtyard_startup(ctx):\n    ctx.get_plugin('hello')\n",
    )
    rt = await courtyard(entry_points=False)
    state, error = (await status(rt))["nosy"]
    assert state == "failed"
    assert "not among its dependencies" in error
