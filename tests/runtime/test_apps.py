"""Apps: the apps API, version ranges in URLs, manifests, and static serving."""

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from archive_kit import zip_bytes
from courtyard.apps.registry import AppConfig, AppRegistry, AppVersion
from courtyard.apps.static import PATH_SEND, StaticFiles, _locate, serve_static
from courtyard.testing import write_plugin


def add_app(
    app_dir: Path,
    name: str,
    version: str,
    files: dict[str, str] | None = None,
    config: dict | None = None,
    manifest: str = "package.json",
) -> Path:
    root = app_dir / name / version
    root.mkdir(parents=True)
    if manifest == "package.json":
        data = {"name": name, "version": version, "description": "x", "scripts": {}}
        if config:
            data["courtyard"] = config
        (root / "package.json").write_text(json.dumps(data))
    else:
        lines = [f'name = "{name}"', f'version = "{version}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in (config or {}).items()]
        (root / "app.toml").write_text("\n".join(lines) + "\n")
    for rel, text in (files or {"index.html": f"<h1>{name} {version}</h1>"}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return tmp_path / "apps"


async def test_list_apps_with_sorted_versions(courtyard, app_dir):
    for version in ("1.10.0", "1.2.0", "1.9.1"):
        add_app(app_dir, "my-app", version)
    add_app(app_dir, "@company/dashboard", "2.0.0", manifest="app.toml")
    add_app(app_dir, "my-app", "3.0.0").joinpath("package.json").write_text("{broken")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/api/apps/")
    assert answer.status_code == 200
    assert answer.json() == [
        {
            "name": "@company/dashboard",
            "path": str(app_dir / "@company" / "dashboard"),
            "versions": ["2.0.0"],
        },
        {
            "name": "my-app",
            "path": str(app_dir / "my-app"),
            "versions": ["1.2.0", "1.9.1", "1.10.0"],
        },
    ]


async def test_version_ranges_in_the_url(courtyard, app_dir):
    for version in ("1.2.0", "1.4.3", "1.10.0", "2.0.0-beta.1"):
        add_app(app_dir, "site", version)
    rt = await courtyard(entry_points=False)

    async def served(path: str) -> str:
        answer = await rt.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        return answer.text

    assert await served("/site/") == "<h1>site 1.10.0</h1>"
    assert await served("/site@latest/") == "<h1>site 1.10.0</h1>"
    assert await served("/site@1.2.0/") == "<h1>site 1.2.0</h1>"
    assert await served("/site@1.4/") == "<h1>site 1.4.3</h1>"
    assert await served("/site@~1.4/") == "<h1>site 1.4.3</h1>"
    assert await served("/site@^1.2/") == "<h1>site 1.10.0</h1>"
    assert await served("/site@2.0.0-beta.1/") == "<h1>site 2.0.0-beta.1</h1>"
    missing = await rt.client.get("/site@3/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "VERSION_NOT_FOUND"
    bad = await rt.client.get("/site@>=1/")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_RANGE"


async def test_scoped_app_and_trailing_slash_redirect(courtyard, app_dir):
    add_app(app_dir, "@company/dashboard", "2.0.0")
    rt = await courtyard(entry_points=False)
    redirect = await rt.client.get("/@company/dashboard@2?x=1")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/@company/dashboard@2/?x=1"
    assert (await rt.client.get("/@company/dashboard/")).text == "<h1>@company/dashboard 2.0.0</h1>"


async def test_static_files_types_and_caching(courtyard, app_dir):
    add_app(
        app_dir,
        "site",
        "1.0.0",
        {
            "index.html": "<p>home</p>",
            "app.js": "console.log(1)",
            "style.css": "p{}",
            "data/info.json": "{}",
            "logo.png": "png",
            "docs/index.html": "<p>docs</p>",
        },
    )
    rt = await courtyard(entry_points=False)
    types = {
        "/site/": "text/html; charset=utf-8",
        "/site/app.js": "text/javascript; charset=utf-8",
        "/site/style.css": "text/css; charset=utf-8",
        "/site/data/info.json": "application/json; charset=utf-8",
        "/site/logo.png": "image/png",
    }
    for path, content_type in types.items():
        answer = await rt.client.get(path)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == content_type, path
        assert answer.headers["x-request-id"]
    assert (await rt.client.get("/site/docs/")).text == "<p>docs</p>"
    folder = await rt.client.get("/site@1/docs?x=1")
    assert folder.status_code == 308
    assert folder.headers["location"] == "/site@1/docs/"

    first = await rt.client.get("/site/app.js")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = await rt.client.get("/site/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert (
        await rt.client.get("/site/app.js", headers={"If-Modified-Since": modified})
    ).status_code == 304
    changed = await rt.client.get("/site/app.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    head = await rt.client.head("/site/app.js")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len("console.log(1)"))
    post = await rt.client.post("/site/app.js")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


async def test_not_found_and_spa_fallback(courtyard, app_dir):
    add_app(app_dir, "plain", "1.0.0")
    add_app(app_dir, "spa", "1.0.0", {"index.html": "<div id=app>"}, config={"spa": True})
    rt = await courtyard(entry_points=False)
    missing = await rt.client.get("/plain/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert (await rt.client.get("/spa/some/client/route")).text == "<div id=app>"


def test_paths_never_leave_the_version_folder(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    (root / "index.html").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    version = AppVersion("v", "1.0.0", root, AppConfig())
    assert _locate(version, "/index.html") == ((root / "index.html").resolve(), False)
    assert _locate(version, "/") == ((root / "index.html").resolve(), True)
    for path in (
        "/../secret.txt",
        "/./../secret.txt",
        "/link",
        "/dirlink/secret.txt",
        "/..\\secret.txt",
        "/index.html\x00",
        "/../v/../secret.txt",
    ):
        assert _locate(version, path) is None, path


async def test_static_files_are_looked_up_once_and_small_ones_kept_in_memory(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    (root / "index.html").write_text("small")
    (root / "big.bin").write_bytes(b"x" * (StaticFiles.MAX_FILE_BYTES + 1))
    files = StaticFiles()
    version = AppVersion("v", "1.0.0", root, AppConfig(), files=files)
    small = await files.get(version, "/index.html")
    big = await files.get(version, "/big.bin")
    assert small is not None and small.body == b"small"
    assert big is not None and big.body is None and big.size == StaticFiles.MAX_FILE_BYTES + 1
    (root / "index.html").unlink()  # an installed version does not change: not looked at
    assert await files.get(version, "/index.html") is small
    assert await files.get(version, "/missing") is None  # misses are kept too


async def test_static_file_memory_and_paths_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(StaticFiles, "MAX_PATHS", 3)
    monkeypatch.setattr(StaticFiles, "MAX_BYTES", 10)
    root = tmp_path / "v"
    root.mkdir()
    for name in "abcde":
        (root / name).write_text("1234")
    files = StaticFiles()
    version = AppVersion("v", "1.0.0", root, AppConfig(), files=files)
    found = [await files.get(version, f"/{name}") for name in "abcde"]
    # c and d find no room left; once a is dropped (three paths at most), e finds some.
    assert [f.body for f in found if f is not None] == [b"1234", b"1234", None, None, b"1234"]
    assert len(files._paths) == 3 and files._bytes <= 10


@pytest.mark.parametrize("offered", [True, False], ids=["path-send", "chunks"])
async def test_a_large_file_is_sent_by_the_server_where_it_offers_to(tmp_path, offered):
    root = tmp_path / "v"
    root.mkdir()
    content = os.urandom(StaticFiles.MAX_FILE_BYTES + 1)  # past what is kept in memory
    (root / "big.bin").write_bytes(content)
    version = AppVersion("v", "1.0.0", root, AppConfig())
    extensions = {PATH_SEND: {}} if offered else {}
    scope = {"type": "http", "method": "GET", "path": "/v/big.bin", "extensions": extensions}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await serve_static(version, "/big.bin", scope, send)
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(content)).encode()
    if offered:
        assert sent[1:] == [{"type": PATH_SEND, "path": str((root / "big.bin").resolve())}]
    else:
        assert {m["type"] for m in sent[1:]} == {"http.response.body"}
        assert b"".join(m["body"] for m in sent[1:]) == content


async def test_a_file_looked_up_by_requests_at_once_is_kept_and_counted_once(tmp_path):
    import asyncio

    root = tmp_path / "v"
    root.mkdir()
    (root / "index.html").write_text("small")
    files = StaticFiles()
    version = AppVersion("v", "1.0.0", root, AppConfig(), files=files)
    found = await asyncio.gather(*(files.get(version, "/index.html") for _ in range(8)))
    assert all(f is found[0] for f in found)
    assert files._bytes == len(b"small")


async def test_an_overwritten_static_version_serves_its_new_files(courtyard, app_dir):
    add_app(app_dir, "site", "1.0.0", {"index.html": "first"})
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/site/")).text == "first"
    manifest = b'{"name": "site", "version": "1.0.0"}'
    archive = zip_bytes([("package.json", manifest), ("index.html", b"second")])
    answer = await rt.client.post(
        "/api/apps/upload", params={"overwrite": "true"}, files={"file": ("site.zip", archive)}
    )
    assert answer.status_code == 200, answer.text
    assert (await rt.client.get("/site/")).text == "second"


def write_hello_plugin(plugin_dir: Path) -> None:
    """A plugin at /hello whose index answers `{"from": "plugin"}`."""
    write_plugin(
        plugin_dir,
        "hello",
        "",
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('h', __name__)\n"
        "    bp.get('/')(lambda: {'from': 'plugin'})\n"
        "    return bp\n",
    )


async def test_routes_win_over_apps_of_the_same_name(courtyard, app_dir, plugin_dir):
    add_app(app_dir, "hello", "1.0.0")
    write_hello_plugin(plugin_dir)
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/hello/")).json() == {"from": "plugin"}
    assert (await rt.client.get("/hello@1/")).text == "<h1>hello 1.0.0</h1>"
    # The app's other paths are its own: the plugin has no route for them.
    assert (await rt.client.get("/hello/index.html")).text == "<h1>hello 1.0.0</h1>"


async def test_routing_is_kept_until_the_routes_or_the_apps_change(
    courtyard, app_dir, plugin_dir, monkeypatch
):
    from courtyard.generation import Generation

    add_app(app_dir, "hello", "1.0.0")
    rt = await courtyard(entry_points=False)
    rt.dispatcher.apps.registry.ttl = 3600  # no rescan by the clock during the test
    asked: list[str] = []
    serves = Generation.serves
    monkeypatch.setattr(
        Generation,
        "serves",
        lambda self, path, method: asked.append(path) or serves(self, path, method),
    )
    for _ in range(3):
        assert (await rt.client.get("/hello/")).text == "<h1>hello 1.0.0</h1>"
    assert asked == ["/hello/"]  # the routes are asked once per path
    # A plugin that comes with a reload claims the path from the next request on...
    write_hello_plugin(plugin_dir)
    assert (await rt.reload()).status_code == 200
    assert (await rt.client.get("/hello/")).json() == {"from": "plugin"}
    # ...and a version installed shows as soon as the apps are looked at again.
    add_app(app_dir, "hello", "2.0.0")
    rt.dispatcher.apps.registry.invalidate()
    assert (await rt.client.get("/hello@2/")).text == "<h1>hello 2.0.0</h1>"


async def rescan_ended(registry: AppRegistry) -> None:
    """Wait until the registry's rescan in a thread has ended and been taken or dropped."""
    for _ in range(1000):
        if not registry._rescanning:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the rescan did not end within 10 s")


def test_without_an_event_loop_the_registry_rescans_at_once(app_dir):
    registry = AppRegistry((app_dir,), ttl=0)
    assert registry.apps() == {}
    add_app(app_dir, "hello", "1.0.0")
    assert list(registry.apps()) == ["hello"]  # the clock's rescan, done in the look


async def test_a_rescan_by_the_clock_runs_beside_the_requests(app_dir, monkeypatch):
    import threading

    from courtyard.apps import registry as registry_module

    add_app(app_dir, "hello", "1.0.0")
    registry = AppRegistry((app_dir,), ttl=0.05)
    first = registry.apps()
    scan, release = registry_module.scan_apps, threading.Event()

    def slow_scan(app_dirs: tuple[Path, ...]) -> dict:
        release.wait(10)
        return scan(app_dirs)

    monkeypatch.setattr(registry_module, "scan_apps", slow_scan)
    add_app(app_dir, "other", "1.0.0")
    await asyncio.sleep(0.06)
    assert registry.apps() is first  # answered at once: the rescan runs in a thread
    release.set()
    await rescan_ended(registry)
    assert sorted(registry.apps()) == ["hello", "other"]


async def test_an_install_is_not_undone_by_a_rescan_that_began_before_it(app_dir, monkeypatch):
    import threading

    from courtyard.apps import registry as registry_module

    add_app(app_dir, "hello", "1.0.0")
    registry = AppRegistry((app_dir,), ttl=0.05)
    registry.apps()
    scan, release, before = registry_module.scan_apps, threading.Event(), {}

    def stale_scan(app_dirs: tuple[Path, ...]) -> dict:
        before.update(scan(app_dirs))  # what the folder held when it began
        release.wait(10)
        return dict(before)

    monkeypatch.setattr(registry_module, "scan_apps", stale_scan)
    await asyncio.sleep(0.06)
    registry.apps()  # starts the slow rescan
    await asyncio.sleep(0.05)
    monkeypatch.setattr(registry_module, "scan_apps", scan)
    add_app(app_dir, "new", "1.0.0")
    registry.invalidate()  # as an install does
    assert "new" in registry.apps()  # scanned at once
    release.set()
    await rescan_ended(registry)  # the slow rescan ended, without "new"
    assert "new" in registry.apps()


async def test_every_answer_of_a_static_app_carries_the_request_id(courtyard, app_dir):
    add_app(app_dir, "site", "1.0.0", {"index.html": "home", "docs/index.html": "docs"})
    rt = await courtyard(entry_points=False)
    etag = (await rt.client.get("/site/")).headers["etag"]
    answers = {
        200: await rt.client.get("/site/"),
        304: await rt.client.get("/site/", headers={"If-None-Match": etag}),
        308: await rt.client.get("/site/docs"),
        404: await rt.client.get("/site/nowhere"),
        400: await rt.client.get("/site@>=1/"),
        405: await rt.client.post("/site/"),
    }
    for status, answer in answers.items():
        assert answer.status_code == status
        assert len(answer.headers.get_list("x-request-id")) == 1, status
    assert (await rt.client.get("/site")).headers["x-request-id"]  # /site -> /site/
    given = await rt.client.get("/site/", headers={"X-Request-Id": "trace-9"})
    assert given.headers["x-request-id"] == "trace-9"


def test_only_paths_no_route_can_match_skip_the_route_lookup():
    from courtyard.generation import route_heads
    from werkzeug.routing import Map, Rule

    rules = Map([Rule("/api/health/"), Rule("/"), Rule("/hello/<who>")]).iter_rules()
    assert route_heads(rules) == {"api", "", "hello"}
    # A rule that starts with a variable may match any first segment: always look up.
    assert route_heads(Map([Rule("/api/x"), Rule("/<name>/y")]).iter_rules()) == frozenset()


async def test_delete_a_version_then_the_app(courtyard, app_dir):
    add_app(app_dir, "site", "1.0.0")
    add_app(app_dir, "site", "2.0.0")
    add_app(app_dir, "@co/dash", "1.0.0")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.delete("/api/apps/_/site/2.0.0")
    assert answer.status_code == 200 and answer.json() == {"success": True}
    assert (await rt.client.get("/site/")).text == "<h1>site 1.0.0</h1>"
    assert (await rt.client.delete("/api/apps/_/site")).json() == {"success": True}
    assert (await rt.client.get("/site/")).status_code == 404
    assert not (app_dir / "site").exists()
    assert (await rt.client.delete("/api/apps/@co/dash/1.0.0")).json() == {"success": True}
    assert not (app_dir / "@co").exists()
    assert (await rt.client.get("/api/apps/")).json() == []


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/apps/", 400, "MISSING_PARAMS"),
        ("/api/apps/_", 400, "MISSING_PARAMS"),
        ("/api/apps/_/ghost", 404, "APP_NOT_FOUND"),
        ("/api/apps/_/site/9.9.9", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/@nobody/site", 404, "APP_NOT_FOUND"),
        ("/api/apps/scope/site", 404, "APP_NOT_FOUND"),
        ("/api/apps/_/Bad", 404, "APP_NOT_FOUND"),
        ("/api/apps/_/nothing/1.0.0", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/scope/site/1.0.0", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/2.0.0", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/%2E%2E", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/%00", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/not a version", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/" + "9" * 300, 404, "VERSION_NOT_FOUND"),
        ("/api/apps/_/site/1.0.0/extra", 400, "MISSING_PARAMS"),
    ],
)
async def test_delete_errors(courtyard, app_dir, path, status, code):
    add_app(app_dir, "site", "1.0.0")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.delete(path)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert (app_dir / "site" / "1.0.0" / "index.html").exists()


async def test_a_version_being_served_finishes_after_deletion(courtyard_server, app_dir):
    import httpx

    big = "x" * (8 * 1024 * 1024)
    add_app(app_dir, "big", "1.0.0", {"index.html": "i", "big.txt": big})
    server = courtyard_server(entry_points=False)
    async with httpx.AsyncClient(base_url=server.url) as client:
        async with client.stream("GET", "/big/big.txt") as answer:
            chunks = answer.aiter_bytes()
            received = len(await chunks.__anext__())
            deleted = await client.delete(
                "/api/apps/_/big/1.0.0", headers={"X-Courtyard-Internal": "true"}
            )
            assert deleted.status_code == 200
            async for chunk in chunks:
                received += len(chunk)
        assert (await client.get("/big/big.txt")).status_code == 404
    assert received == len(big)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"env": {"BAD=NAME": "x"}}, "not a valid environment variable"),
        ({"env": {"": "x"}}, "not a valid environment variable"),
        ({"max_memory_mb": 8}, "0 (no limit) or at least 16"),
    ],
)
def test_bad_app_settings_are_manifest_errors(tmp_path, config, message):
    from courtyard.apps.registry import AppManifestError, read_app_manifest

    root = add_app(tmp_path, "x", "1.0.0", config=config)
    with pytest.raises(AppManifestError, match=re.escape(message)):
        read_app_manifest(root)


def test_no_memory_limit_is_allowed_and_api_and_console_are_reserved_names(tmp_path):
    from courtyard.apps.registry import AppManifestError, read_app_manifest

    assert read_app_manifest(add_app(tmp_path, "x", "1.0.0", config={"max_memory_mb": 0}))
    for reserved in ("api", "console"):
        with pytest.raises(AppManifestError, match="reserved"):
            read_app_manifest(add_app(tmp_path, reserved, "1.0.0"))


async def test_deleting_an_equal_spelling_deletes_the_installed_version(courtyard, app_dir):
    add_app(app_dir, "site", "1.0.0")
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/api/apps/")).json()[0]["versions"] == ["1.0.0"]
    answer = await rt.client.delete("/api/apps/_/site/1.0")
    assert answer.status_code == 200
    assert not (app_dir / "site" / "1.0.0").exists()


@pytest.mark.parametrize(
    "path",
    ["/site/" + "a" * 300, "/site/" + "a" * 300 + "/b", "/site/%00", "/site@" + "9" * 300 + "/"],
)
async def test_paths_no_file_system_can_hold_are_not_found(courtyard, app_dir, path):
    add_app(app_dir, "site", "1.0.0")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get(path)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] in ("NOT_FOUND", "VERSION_NOT_FOUND")


def test_worker_settings_come_from_the_manifest_checked_once(tmp_path):
    """The manifest's model is the worker pool's settings: one definition, one check."""
    from courtyard.apps.config import AppSettings
    from courtyard.apps.registry import AppManifestError, read_app_manifest
    from courtyard.apps.router import worker_app

    config = {"entry": "app:app", "network": False, "forward_credentials": True, "ttl": 0}
    root = add_app(tmp_path, "x", "1.0.0", config=config, manifest="app.toml")
    name, version, parsed = read_app_manifest(root)
    assert isinstance(parsed, AppSettings)
    settings = worker_app(AppVersion(name, version, root, parsed)).settings
    assert (settings.network, settings.forward_credentials, settings.ttl) == (False, True, 0)
    assert AppConfig().network is True and AppConfig().forward_credentials is False
    bad = add_app(tmp_path / "bad", "x", "1.0.0", config={"network": "sometimes"})
    with pytest.raises(AppManifestError, match="network"):
        read_app_manifest(bad)
