import json

from click.testing import CliRunner
from courtyard.cli import main
from courtyard.testing import write_plugin


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def test_plugins_list_shows_status_and_errors(add_fixture_plugins, plugin_dir, tmp_path):
    add_fixture_plugins("hello", "broken")
    result = run(
        "plugins",
        "list",
        "--plugin-dir",
        str(plugin_dir),
        "--data-dir",
        str(tmp_path),
        env={"COURTYARD_ENTRY_POINTS": "0"},
    )
    assert result.exit_code == 1  # a failed plugin is worth a non-zero exit for scripts
    assert "hello" in result.output and "loaded" in result.output
    assert "error: import failed: RuntimeError: broken on purpose" in result.output


def test_plugins_list_json(add_fixture_plugins, plugin_dir, tmp_path):
    add_fixture_plugins("hello")
    result = run(
        "plugins",
        "list",
        "--json",
        "--plugin-dir",
        str(plugin_dir),
        "--data-dir",
        str(tmp_path),
        env={"COURTYARD_ENTRY_POINTS": "0"},
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["name"] == "hello" and row["status"] == "loaded" and row["version"] == "1.2.0"
    assert row["import_ms"] >= 0
    assert row["hooks"] == [
        "courtyard_provides",
        "courtyard_routes",
        "courtyard_shutdown",
        "courtyard_startup",
    ]


def test_plugins_list_does_not_run_startup_hooks(plugin_dir, tmp_path):
    write_plugin(
        plugin_dir,
        "loud",
        "",
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\ndef courtyard_startup(ctx):\n    raise SystemExit('started!')\n",
    )
    result = run(
        "plugins",
        "list",
        "--plugin-dir",
        str(plugin_dir),
        "--data-dir",
        str(tmp_path),
        env={"COURTYARD_ENTRY_POINTS": "0"},
    )
    assert result.exit_code == 0 and "loaded" in result.output


def test_bad_settings_are_a_clean_error(tmp_path):
    (tmp_path / "c.toml").write_text("colour = 'red'\n")
    result = run("serve", "--config", str(tmp_path / "c.toml"))
    assert result.exit_code == 1
    assert "colour: unknown setting" in result.output
    assert "Traceback" not in result.output


def test_serve_help_lists_every_option():
    output = run("serve", "--help").output
    for option in (
        "--host",
        "--port",
        "--plugin-dir",
        "--app-dir",
        "--data-dir",
        "--config",
        "--log-level",
        "--log-format",
        "--strict",
    ):
        assert option in output


def test_bind_address_brackets_ipv6():
    from courtyard.server import bind_address

    assert bind_address("::1", 80) == "[::1]:80"
    assert bind_address("127.0.0.1", 80) == "127.0.0.1:80"
