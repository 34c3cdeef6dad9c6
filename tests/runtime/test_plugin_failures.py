"""How a failing plugin is reported: one line in the API, the traceback in the log; and
the statuses, one enum of the SDK whose members are the strings the API answers."""

import json
import logging

from courtyard.testing import write_plugin
from courtyard_sdk import PluginStatus

FAILED_LOADING = "plugin failed loading with message"


def failures(caplog, name):
    """The log records of plugin `name`'s exclusion."""
    return [
        r
        for r in caplog.records
        if r.name == "courtyard.generation" and r.getMessage().startswith(f"{name} | ")
    ]


async def listed(rt):
    return {p["name"]: p for p in (await rt.client.get("/api/plugins/")).json()}


async def test_a_failed_import_is_logged_with_its_traceback(courtyard, add_fixture_plugins, caplog):
    caplog.set_level(logging.ERROR, "courtyard.generation")
    add_fixture_plugins("broken", "hello")
    rt = await courtyard(entry_points=False)
    (record,) = failures(caplog, "broken")
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"broken | {FAILED_LOADING}: import failed: RuntimeError: broken on purpose"
    )
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    # The traceback reaches into the plugin's own file, where it raised.
    text = caplog.text
    assert "Traceback (most recent call last)" in text
    assert 'raise RuntimeError("broken on purpose")' in text
    # The API keeps the one-line cause.
    assert (await listed(rt))["broken"]["error"] == "import failed: RuntimeError: broken on purpose"


async def test_a_failing_hook_is_logged_with_its_traceback(courtyard, plugin_dir, caplog):
    caplog.set_level(logging.ERROR, "courtyard.generation")
    write_plugin(
        plugin_dir,
        "bad-start",
        "",
        "from courtyard_sdk import hookimpl\n"
        "def connect():\n    raise ValueError('no db')\n"
        "@hookimpl\nasync def courtyard_startup(ctx):\n    connect()\n",
    )
    rt = await courtyard(entry_points=False)
    (record,) = failures(caplog, "bad-start")
    assert (
        record.getMessage()
        == f"bad-start | {FAILED_LOADING}: courtyard_startup raised ValueError: no db"
    )
    assert isinstance(record.exc_info[1], ValueError)
    assert "in connect" in caplog.text  # the frame that raised
    reload = (await rt.reload()).json()
    assert reload["failed"] == [
        {"name": "bad-start", "error": "courtyard_startup raised ValueError: no db"}
    ]


async def test_a_failure_without_an_exception_is_one_line(courtyard, plugin_dir, caplog):
    caplog.set_level(logging.ERROR, "courtyard.generation")
    write_plugin(plugin_dir, "needs-ghost", 'dependencies = ["ghost"]\n')
    await courtyard(entry_points=False)
    (record,) = failures(caplog, "needs-ghost")
    assert record.getMessage() == f"needs-ghost | {FAILED_LOADING}: missing dependency: ghost"
    assert record.exc_info is None


def test_statuses_are_the_strings_the_api_answers():
    assert [s.value for s in PluginStatus] == ["loaded", "failed", "disabled", "unloaded"]
    assert PluginStatus.FAILED == "failed" and f"{PluginStatus.LOADED}" == "loaded"
    assert json.dumps({"status": PluginStatus.DISABLED}) == '{"status": "disabled"}'


async def test_every_listed_status_is_a_plugin_status(courtyard, add_fixture_plugins, plugin_dir):
    add_fixture_plugins("hello", "broken")
    write_plugin(plugin_dir, "off", "enabled = false\n")
    rt = await courtyard(entry_points=False)
    write_plugin(plugin_dir, "newcomer")
    statuses = {name: p["status"] for name, p in (await listed(rt)).items()}
    assert statuses == {
        "hello": PluginStatus.LOADED,
        "broken": PluginStatus.FAILED,
        "off": PluginStatus.DISABLED,
        "newcomer": PluginStatus.UNLOADED,
    }
    assert rt.dispatcher.current.record("hello").status is PluginStatus.LOADED
