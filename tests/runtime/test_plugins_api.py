from pathlib import Path

import pytest


async def test_list_is_a_filesystem_scan_with_status(courtyard, add_fixture_plugins, plugin_dir):
    add_fixture_plugins("hello", "broken", "@acme/greeter")
    rt = await courtyard(entry_points=False)
    (plugin_dir / "later").mkdir()
    (plugin_dir / "later" / "plugin.toml").write_text('name = "later"\n')
    (plugin_dir / ".hidden").mkdir()

    answer = await rt.client.get("/api/plugins/")
    assert answer.status_code == 200
    rows = {row["name"]: row for row in answer.json()}
    assert set(rows) == {"hello", "broken", "@acme/greeter", "later"}
    assert rows["@acme/greeter"]["path"] == str(plugin_dir / "@acme" / "greeter")
    assert rows["hello"]["status"] == "loaded"
    assert rows["broken"]["status"] == "failed"
    assert "broken on purpose" in rows["broken"]["error"]
    assert rows["later"]["status"] == "unloaded"


async def test_loaded_lists_the_seed_fields_in_dependency_order(courtyard, add_fixture_plugins):
    add_fixture_plugins("@acme/greeter", "hello")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/api/plugins/loaded")
    assert answer.json() == [
        {
            "name": "hello",
            "base": "/hello",
            "dependencies": [],
            "optionalDependencies": [],
            "menus": [{"title": "Hello", "icon": "lucide:hand", "path": "/hello"}],
        },
        {
            "name": "@acme/greeter",
            "base": "/greeter",
            "dependencies": ["hello"],
            "optionalDependencies": [],
            "menus": [
                {
                    "title": "Greeter",
                    "icon": "lucide:smile",
                    "path": "/greeter",
                    "items": [{"title": "Settings", "icon": None, "path": "/greeter/settings"}],
                }
            ],
        },
    ]


async def test_a_dropped_in_plugin_serves_after_reload(courtyard, add_fixture_plugins):
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/hello/")).status_code == 404
    add_fixture_plugins("hello")
    answer = await rt.reload()
    assert answer.status_code == 200
    assert answer.json() == {
        "ok": True,
        "plugins": [{"name": "hello", "base": "/hello"}],
        "failed": [],
    }
    assert (await rt.client.get("/hello/")).json() == {"message": "hello"}


async def test_reload_reports_failures_and_keeps_the_rest(courtyard, add_fixture_plugins):
    add_fixture_plugins("hello", "broken")
    rt = await courtyard(entry_points=False)
    body = (await rt.reload()).json()
    assert body["plugins"] == [{"name": "hello", "base": "/hello"}]
    assert [f["name"] for f in body["failed"]] == ["broken"]
    assert "RuntimeError: broken on purpose" in body["failed"][0]["error"]


async def test_strict_reload_failure_keeps_the_old_generation(
    courtyard, add_fixture_plugins, plugin_dir
):
    add_fixture_plugins("hello")
    rt = await courtyard(entry_points=False, strict=True)
    add_fixture_plugins("broken")
    answer = await rt.reload()
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "RELOAD_FAILED"
    assert "broken" in answer.json()["error"]["message"]
    assert rt.dispatcher.current.number == 1
    assert (await rt.client.get("/hello/")).status_code == 200


@pytest.mark.parametrize("path", ["/api/plugins/%40acme%2Fgreeter", "/api/plugins/@acme/greeter"])
async def test_delete_removes_files_and_unloads(courtyard, add_fixture_plugins, plugin_dir, path):
    add_fixture_plugins("hello", "@acme/greeter")
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/greeter/bob")).json() == {"message": "hello, bob"}
    answer = await rt.client.delete(path)
    assert answer.status_code == 200
    assert answer.json() == {"success": True}
    assert not (plugin_dir / "@acme").exists()
    assert (await rt.client.get("/greeter/bob")).status_code == 404
    names = [p["name"] for p in (await rt.client.get("/api/plugins/loaded")).json()]
    assert names == ["hello"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/plugins/", 400, "MISSING_NAME"),
        ("/api/plugins/%20", 400, "MISSING_NAME"),
        ("/api/plugins/nothing-here", 404, "PLUGIN_NOT_FOUND"),
        ("/api/plugins/..%2F..%2Fetc", 400, "PATH_TRAVERSAL"),
        ("/api/plugins/Hello", 400, "PATH_TRAVERSAL"),
    ],
)
async def test_delete_errors(courtyard, add_fixture_plugins, plugin_dir, path, status, code):
    add_fixture_plugins("hello")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.delete(path)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert (plugin_dir / "hello" / "plugin.toml").exists()


async def test_delete_refuses_an_installed_distribution(courtyard, installed_plugin):
    rt = await courtyard()
    answer = await rt.client.delete("/api/plugins/fixture-ep")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "PLUGIN_NOT_FOUND"
    assert "installed distribution" in answer.json()["error"]["message"]
    assert Path(installed_plugin, "courtyard_fixture_ep", "plugin.toml").exists()


async def test_delete_cannot_leave_the_plugin_dir_through_a_symlink(
    courtyard, plugin_dir, tmp_path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "plugin.toml").write_text('name = "escape"\n')
    (plugin_dir / "escape").symlink_to(outside, target_is_directory=True)
    rt = await courtyard(entry_points=False)
    answer = await rt.client.delete("/api/plugins/escape")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "PATH_TRAVERSAL"
    assert (outside / "plugin.toml").exists()


async def test_a_plugin_that_fails_to_load_on_upload_never_replaces_the_serving_one(
    courtyard, add_fixture_plugins, plugin_dir, tmp_path
):
    import io
    import tarfile

    from courtyard.generation import BuildError
    from courtyard_sdk import StartupError

    assert issubclass(BuildError, StartupError)
    add_fixture_plugins("hello")
    rt = await courtyard(entry_points=False)
    serving = rt.dispatcher.current
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in [
            ("plugin.toml", 'name = "hello"\nmodule = "plugin"\nbase = "/hello"\n'),
            ("plugin.py", "raise RuntimeError('bad release')\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    answer = await rt.client.post(
        "/api/plugins/upload", files={"file": ("hello.tgz", archive.getvalue())}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "PLUGIN_LOAD_FAILED"
    assert "bad release" in answer.json()["error"]["message"]
    assert rt.dispatcher.current is serving  # no generation without the plugin ever served
    assert (await rt.client.get("/hello/")).json() == {"message": "hello"}
