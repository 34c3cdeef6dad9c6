"""Every hook in courtyard_sdk.hookspecs, exercised through a real plugin."""

from courtyard.testing import write_plugin

HEADER = "from courtyard_sdk import Blueprint, Menu, hookimpl, jsonify\n"


async def test_courtyard_routes_and_courtyard_provides(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello", "@acme/greeter")
    rt = await courtyard(entry_points=False, plugins={"hello": {"greeting": "hi"}})
    assert (await rt.client.get("/greeter/ann")).json() == {"message": "hi, ann"}


async def test_courtyard_routes_must_return_blueprints(courtyard, plugin_dir):
    write_plugin(
        plugin_dir, "wrong", "", HEADER + "@hookimpl\ndef courtyard_routes(ctx):\n    return 42\n"
    )
    rt = await courtyard(entry_points=False)
    row = next(r for r in (await rt.client.get("/api/plugins/")).json() if r["name"] == "wrong")
    assert (
        row["error"] == "courtyard_routes raised TypeError: "
        "courtyard_routes must return Blueprint objects, got int"
    )


async def test_courtyard_startup_and_courtyard_shutdown_run_once_per_generation(
    courtyard, add_fixture_plugins, plugin_dir
):
    add_fixture_plugins("hello")
    rt = await courtyard(entry_points=False)
    events = plugin_dir.parent / "data" / "plugin-data" / "hello" / "events.log"
    assert events.read_text().split() == ["startup"]
    await rt.reload()
    await rt.reload()
    await rt.dispatcher.close()
    # Old generations retire in the background, so only the counts are fixed.
    assert sorted(events.read_text().split()) == ["shutdown"] * 3 + ["startup"] * 3
    await rt.dispatcher.close()  # closing twice runs nothing twice
    assert events.read_text().count("shutdown") == 3


async def test_courtyard_shutdown_failure_does_not_stop_the_others(
    courtyard, plugin_dir, add_fixture_plugins
):
    add_fixture_plugins("hello")
    write_plugin(
        plugin_dir,
        "bad-stop",
        'dependencies = ["hello"]\n',
        HEADER + "@hookimpl\ndef courtyard_shutdown(ctx):\n    raise RuntimeError('x')\n",
    )
    rt = await courtyard(entry_points=False)
    await rt.dispatcher.close()
    events = plugin_dir.parent / "data" / "plugin-data" / "hello" / "events.log"
    assert events.read_text().split() == ["startup", "shutdown"]


async def test_courtyard_request_short_circuits_in_dependency_order(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "gate",
        "",
        HEADER + "@hookimpl\nasync def courtyard_request(ctx, request):\n"
        "    if request.headers.get('X-Block'):\n"
        "        return jsonify({'blocked_by': ctx.name}), 418\n",
    )
    write_plugin(
        plugin_dir,
        "late",
        'dependencies = ["gate"]\n',
        HEADER + "@hookimpl\ndef courtyard_request(ctx, request):\n"
        "    if request.headers.get('X-Block'):\n"
        "        return {'blocked_by': ctx.name}\n",
    )
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/api/health/", headers={"X-Block": "1"})
    assert answer.status_code == 418
    assert answer.json() == {"blocked_by": "gate"}
    assert answer.headers["x-request-id"]
    assert (await rt.client.get("/api/health/")).status_code == 200


async def test_courtyard_response_runs_in_reverse_order_and_may_replace(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "outer",
        "",
        HEADER + "@hookimpl\ndef courtyard_response(ctx, request, response):\n"
        "    response.headers['X-Order'] = response.headers.get('X-Order', '') + 'outer'\n",
    )
    write_plugin(
        plugin_dir,
        "inner",
        'dependencies = ["outer"]\n',
        HEADER + "@hookimpl\nasync def courtyard_response(ctx, request, response):\n"
        "    if request.path == '/replace-me':\n"
        "        return {'replaced': True}\n"
        "    response.headers['X-Order'] = 'inner,'\n",
    )
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/api/health/live")
    assert answer.headers["x-order"] == "inner,outer"
    replaced = await rt.client.get("/replace-me")
    assert replaced.json() == {"replaced": True}
    assert replaced.headers["x-order"] == "outer"
    assert replaced.headers["x-request-id"]


async def test_courtyard_menus_depend_on_the_request(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "dyn",
        '[[menus]]\ntitle = "Static"\npath = "/dyn"\n',
        HEADER + "@hookimpl\ndef courtyard_menus(ctx, request):\n"
        "    if request.headers.get('X-Admin'):\n"
        "        return [Menu(title='Admin', path='/dyn/admin', icon='lucide:shield'),\n"
        "                {'title': 'Raw', 'path': '/dyn/raw'}]\n",
    )
    rt = await courtyard(entry_points=False)
    plain = (await rt.client.get("/api/plugins/loaded")).json()[0]["menus"]
    assert [m["title"] for m in plain] == ["Static"]
    admin = (await rt.client.get("/api/plugins/loaded", headers={"X-Admin": "1"})).json()
    assert [m["path"] for m in admin[0]["menus"]] == ["/dyn", "/dyn/admin", "/dyn/raw"]


async def test_courtyard_menus_bad_entries_are_skipped(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "dyn",
        '[[menus]]\ntitle = "Static"\npath = "/dyn"\n',
        HEADER + "@hookimpl\ndef courtyard_menus(ctx, request):\n"
        "    return [{'title': 'x', 'path': 'relative'}]\n",
    )
    rt = await courtyard(entry_points=False)
    assert [
        m["title"] for m in (await rt.client.get("/api/plugins/loaded")).json()[0]["menus"]
    ] == ["Static"]


def test_courtyard_commands_add_cli_subcommands(plugin_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from courtyard.cli import main

    write_plugin(
        plugin_dir,
        "tool",
        "",
        "import click\nfrom courtyard_sdk import hookimpl\n"
        "@click.command('greet')\n@click.argument('who')\n"
        "def greet(who):\n    click.echo(f'hi {who}')\n"
        "@click.command('serve')\ndef clash():\n    pass\n"
        "@hookimpl\ndef courtyard_commands(ctx):\n    return [greet, clash]\n",
    )
    monkeypatch.setenv("COURTYARD_PLUGIN_DIRS", str(plugin_dir))
    monkeypatch.setenv("COURTYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COURTYARD_ENTRY_POINTS", "false")
    runner = CliRunner()
    result = runner.invoke(main, ["greet", "ann"])
    assert result.exit_code == 0, result.output
    assert result.output == "hi ann\n"
    assert "greet" in runner.invoke(main, ["--help"]).output
    # A plugin cannot replace a core command.
    assert "Serve the runtime" in runner.invoke(main, ["serve", "--help"]).output


async def test_retired_generations_are_freed(courtyard, add_fixture_plugins):
    import asyncio
    import gc
    import sys
    import weakref

    add_fixture_plugins("hello", "@acme/greeter")
    rt = await courtyard(entry_points=False)
    first = weakref.ref(rt.dispatcher.current)
    first_modules = [name for name in sys.modules if name.startswith("_courtyard_g1_")]
    assert first_modules
    assert (await rt.reload()).status_code == 200
    while rt.dispatcher._retiring:
        await asyncio.sleep(0.01)
    gc.collect()
    assert first() is None
    assert not [name for name in sys.modules if name.startswith("_courtyard_g1_")]


async def test_trace_hooks_logs_every_call_with_plugin_and_duration(
    courtyard, add_fixture_plugins, caplog
):
    import logging

    add_fixture_plugins("hello")
    with caplog.at_level(logging.INFO, logger="courtyard.hooks"):
        rt = await courtyard(entry_points=False, trace_hooks=True)
        await rt.client.get("/hello/")
    lines = [r.getMessage() for r in caplog.records if r.name == "courtyard.hooks"]
    routes = next(line for line in lines if line.startswith("courtyard_routes"))
    assert routes.startswith("courtyard_routes [hello] ctx=<ctx hello> ")
    assert routes.endswith(" ms")
    assert any(line.startswith("courtyard_startup [hello]") for line in lines)


async def test_no_tracing_by_default(courtyard, add_fixture_plugins, caplog):
    import logging

    add_fixture_plugins("hello")
    with caplog.at_level(logging.INFO, logger="courtyard.hooks"):
        await courtyard(entry_points=False)
    assert not [r for r in caplog.records if r.name == "courtyard.hooks"]


async def test_trace_hooks_logs_the_request_path_and_menus_too(courtyard, plugin_dir, caplog):
    import logging

    write_plugin(
        plugin_dir,
        "seen",
        "",
        HEADER + "@hookimpl\nasync def courtyard_request(ctx, request):\n    pass\n"
        "@hookimpl\ndef courtyard_response(response):\n    response.headers['X-Seen'] = '1'\n"
        "@hookimpl\ndef courtyard_menus(ctx):\n    return None\n",
    )
    with caplog.at_level(logging.INFO, logger="courtyard.hooks"):
        rt = await courtyard(entry_points=False, trace_hooks=True)
        answer = await rt.client.get("/api/plugins/loaded")
    assert answer.headers["x-seen"] == "1"
    lines = [r.getMessage() for r in caplog.records if r.name == "courtyard.hooks"]
    for hook in ("courtyard_request", "courtyard_response", "courtyard_menus"):
        assert any(line.startswith(f"{hook} [seen] ctx=<ctx seen> ") for line in lines), hook
