"""The remote CLI (`courtyard plugins pack|upload|loaded|remove|reload`, `plugins list
--url`, `courtyard apps pack|upload|list|remove`), against a real `courtyard serve`."""

import json
import os
import signal
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner
from courtyard.cli import add_remote_commands, client
from courtyard.cli.options import remote_options
from courtyard.cli.pack import MTIME
from courtyard.cli.plugins import remote_list
from courtyard.testing import free_port, write_plugin


def build_cli() -> click.Group:
    """The CLI as courtyard.cli wires it: the remote commands added to fresh `courtyard` and
    `courtyard plugins` groups, and `plugins list` asking a server when given a URL."""
    main = click.Group("courtyard")
    plugins = click.Group("plugins")
    main.add_command(plugins)

    @plugins.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @remote_options(default_url=None)
    def list_plugins(as_json: bool, url: str | None, api_key: str | None) -> None:
        if url:
            remote_list(url, api_key, as_json)
            return
        click.echo("local list")

    add_remote_commands(plugins, main)
    return main


CLI = build_cli()
CLEAN_ENV = {"COURTYARD_URL": None, "COURTYARD_API_KEY": None, "FORCE_COLOR": None}


def run(*args: object, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(CLI, [str(a) for a in args], env={**CLEAN_ENV, **(env or {})})


def route(word: str) -> str:
    return (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('hello', __name__)\n"
        "    @bp.get('/')\n"
        "    async def index():\n"
        f"        return {{'word': {word!r}}}\n"
        "    return bp\n"
    )


def hello(src: Path, version: str, word: str) -> Path:
    return write_plugin(src, "@acme/hello", f'version = "{version}"\n', route(word))


def site(root: Path, name: str, version: str, text: str, toml: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if toml:
        (root / "app.toml").write_text(f'name = "{name}"\nversion = "{version}"\n')
    else:
        (root / "package.json").write_text(json.dumps({"name": name, "version": version}))
    (root / "index.html").write_text(text)
    return root


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


# -- pack ------------------------------------------------------------------------------


def test_pack_writes_plain_files_only_and_leaves_junk_out(tmp_path, monkeypatch):
    root = hello(tmp_path / "src", "1.0.0", "one")
    files = {
        "lib/util.py": 0o600,
        "bin/run.sh": 0o700,
        ".well-known/security.txt": 0o644,
        # left out:
        "__pycache__/plugin.cpython-311.pyc": 0o644,
        "lib/util.pyc": 0o644,
        ".git/HEAD": 0o644,
        ".env": 0o600,
        "lib/.DS_Store": 0o644,
        "venv/pyvenv.cfg": 0o644,
        "venv/lib/site.py": 0o644,
        "node_modules/x/index.js": 0o644,
        "acme-hello-0.9.0.tgz": 0o644,  # an earlier pack into the folder
    }
    for rel, mode in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
        (root / rel).chmod(mode)
    (root / "empty").mkdir()
    monkeypatch.chdir(root)  # the default output goes into the folder being packed

    result = run("plugins", "pack", root)
    assert result.exit_code == 0, result.output
    archive = root / "acme-hello-1.0.0.tgz"
    assert "packed @acme/hello 1.0.0: 5 files" in result.output and str(archive) in result.output
    found = members(archive)
    assert sorted(found) == [
        "package/.well-known/security.txt",
        "package/bin/run.sh",
        "package/lib/util.py",
        "package/plugin.py",
        "package/plugin.toml",
    ]
    assert all(m.isreg() and m.uid == 0 and m.mtime == MTIME for m in found.values())
    assert found["package/bin/run.sh"].mode == 0o755
    assert found["package/lib/util.py"].mode == 0o644

    first = archive.read_bytes()
    again = run("plugins", "pack", root, "--json")  # the archive in the folder stays out
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["files"] == 5
    assert archive.read_bytes() == first  # reproducible

    out = run("plugins", "pack", root, "-o", tmp_path)
    assert out.exit_code == 0 and (tmp_path / "acme-hello-1.0.0.tgz").read_bytes() == first
    named = run("plugins", "pack", root, "-o", tmp_path / "custom.tar.gz")
    assert named.exit_code == 0 and (tmp_path / "custom.tar.gz").is_file()


def test_pack_refuses_links_bad_manifests_and_bad_names_before_any_network_call(
    tmp_path, monkeypatch
):
    def no_network(*args, **kwargs):
        raise AssertionError("no request may be sent")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    monkeypatch.chdir(tmp_path)
    root = hello(tmp_path / "src", "1.0.0", "one")
    (root / "link.py").symlink_to(root / "plugin.py")
    result = run("plugins", "pack", root)
    assert result.exit_code == 1
    assert "error: PACK_FAILED: link.py is a symbolic link" in result.stderr
    assert "Traceback" not in result.output
    (root / "link.py").unlink()

    (root / "plugin.toml").write_text('name = "@acme/hello"\nbase = "/api"\n')
    for args in (
        ("plugins", "pack", root),
        ("plugins", "upload", root, "--url", "http://127.0.0.1:9"),
    ):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert "error: INVALID_MANIFEST: " in result.stderr
        assert "plugin.toml: base: " in result.stderr and "/api" in result.stderr

    app = site(tmp_path / "app", "my-app", "1.0.0", "x")
    (app / "index.html").unlink()
    result = run("apps", "upload", app, "--url", "http://127.0.0.1:9", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "INVALID_MANIFEST"
    assert "index.html" in result.stderr

    (app / "package.json").write_text(json.dumps({"name": "../evil", "version": "1.0.0"}))
    assert "error: PATH_TRAVERSAL: " in run("apps", "pack", app).stderr

    wrong = run("plugins", "pack", hello(tmp_path / "ok", "1.0.0", "x"), "-o", "out.txt")
    assert "error: PACK_FAILED: out.txt: the archive's name must end in .tgz" in wrong.stderr
    assert list(tmp_path.glob("*.tgz")) == [] and not Path("out.txt").exists()


# -- against a real server -------------------------------------------------------------


def test_a_crash_while_an_upload_is_checked_keeps_the_accepted_version(
    courtyard_server, tmp_path, plugin_dir
):
    """SIGKILL while the new version is being loaded: after a restart the version that
    was accepted serves, not the unchecked one."""
    server = courtyard_server(entry_points=False)
    one = hello(tmp_path / "one", "1.0.0", "one")
    assert run("plugins", "upload", one, "--url", server.url).exit_code == 0
    slow = write_plugin(
        tmp_path / "two",
        "@acme/hello",
        'version = "2.0.0"\n',
        "import time\ntime.sleep(60)  # still being checked when the server dies\n" + route("two"),
    )
    upload = threading.Thread(target=run, args=("plugins", "upload", slow, "--url", server.url))
    upload.start()
    scope = plugin_dir / "@acme"
    deadline = time.monotonic() + 20
    while not [p for p in scope.iterdir() if p.name.startswith(".courtyard-old-")]:
        assert time.monotonic() < deadline, "the new version was never put in place"
        time.sleep(0.02)
    assert "two" in (scope / "hello" / "plugin.py").read_text()  # in place, being checked
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    upload.join()

    again = courtyard_server(entry_points=False)
    assert httpx.get(f"{again.url}/hello/").json() == {"word": "one"}
    assert sorted(p.name for p in scope.iterdir()) == ["hello"]


def test_plugin_pack_upload_change_and_remove_on_a_real_server(
    courtyard_server, tmp_path, plugin_dir
):
    server = courtyard_server(entry_points=False)
    url = server.url
    root = hello(tmp_path / "src", "1.0.0", "one")
    packed = run("plugins", "pack", root, "-o", tmp_path)
    assert packed.exit_code == 0, packed.output

    result = run("plugins", "upload", tmp_path / "acme-hello-1.0.0.tgz", "--url", url)
    assert result.exit_code == 0, result.output
    assert "uploaded plugin @acme/hello 1.0.0 to " in result.stdout
    assert (plugin_dir / "@acme" / "hello" / "plugin.toml").is_file()
    assert httpx.get(f"{url}/hello/").json() == {"word": "one"}

    loaded = run("plugins", "loaded", "--url", url)
    assert loaded.exit_code == 0, loaded.output
    assert "@acme/hello" in loaded.stdout and "/hello" in loaded.stdout
    rows = json.loads(run("plugins", "loaded", "--url", url, "--json").stdout)
    assert [(r["name"], r["base"]) for r in rows] == [("@acme/hello", "/hello")]

    hello(tmp_path / "src", "1.1.0", "two")  # a folder is packed, then uploaded
    result = run("plugins", "upload", root, env={"COURTYARD_URL": url})
    assert result.exit_code == 0, result.output
    assert "packed @acme/hello 1.1.0" in result.stderr
    assert "uploaded plugin @acme/hello 1.1.0" in result.stdout
    assert httpx.get(f"{url}/hello/").json() == {"word": "two"}

    listed = run("plugins", "list", env={"COURTYARD_URL": url})
    assert listed.exit_code == 0, listed.output
    assert "@acme/hello" in listed.stdout and "1.1.0" in listed.stdout
    assert "loaded" in listed.stdout and str(plugin_dir) in listed.stdout
    (row,) = json.loads(run("plugins", "list", "--url", url, "--json").stdout)
    assert (row["name"], row["version"], row["status"]) == ("@acme/hello", "1.1.0", "loaded")
    assert run("plugins", "list").stdout == "local list\n"

    reloaded = run("plugins", "reload", "--url", url)
    assert reloaded.exit_code == 0, reloaded.output
    assert "reloaded: 1 loaded, 0 failed" in reloaded.stdout

    removed = run("plugins", "remove", "@acme/hello", "--url", url)
    assert removed.exit_code == 0, removed.output
    assert removed.stdout == "removed plugin @acme/hello\n"
    assert json.loads(run("plugins", "loaded", "--url", url, "--json").stdout) == []
    assert run("plugins", "loaded", "--url", url).stdout == "no plugins loaded\n"
    assert httpx.get(f"{url}/hello/").status_code == 404
    assert not (plugin_dir / "@acme" / "hello").exists()

    again = run("plugins", "remove", "@acme/hello", "--url", url)
    assert again.exit_code == 1
    assert again.stderr.startswith("error: PLUGIN_NOT_FOUND: Plugin @acme/hello not found")
    assert "Traceback" not in again.output

    broken = write_plugin(tmp_path / "src", "broken", "", "raise RuntimeError('on purpose')\n")
    failed = run("plugins", "upload", broken, "--url", url, "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["error"]["code"] == "PLUGIN_LOAD_FAILED"
    assert "error: PLUGIN_LOAD_FAILED: broken: " in failed.stderr
    assert "on purpose" in failed.stderr


def test_app_pack_upload_versions_and_remove_on_a_real_server(courtyard_server, tmp_path):
    server = courtyard_server(entry_points=False, upload_max_bytes=1_000_000)
    url = server.url
    src = site(tmp_path / "site", "@acme/site", "1.0.0", "<h1>one</h1>")
    (src / ".well-known").mkdir()
    (src / ".well-known" / "security.txt").write_text("Contact: x")
    packed = run("apps", "pack", src, "-o", tmp_path, "--json")
    assert packed.exit_code == 0, packed.output
    archive = Path(json.loads(packed.stdout)["path"])
    assert archive == tmp_path / "acme-site-1.0.0.tgz"

    result = run("apps", "upload", archive, "--url", url)
    assert result.exit_code == 0, result.output
    assert "uploaded app @acme/site 1.0.0 to " in result.stdout
    assert httpx.get(f"{url}/@acme/site/").text == "<h1>one</h1>"
    assert httpx.get(f"{url}/@acme/site/.well-known/security.txt").text == "Contact: x"

    exists = run("apps", "upload", archive, "--url", url)
    assert exists.exit_code == 1
    assert exists.stderr.startswith("error: VERSION_EXISTS: @acme/site 1.0.0 ")
    (src / "index.html").write_text("<h1>replaced</h1>")
    replaced = run("apps", "upload", src, "--overwrite", "--url", url)
    assert replaced.exit_code == 0, replaced.output
    assert httpx.get(f"{url}/@acme/site/").text == "<h1>replaced</h1>"

    two = site(tmp_path / "site2", "@acme/site", "2.0.0", "<h1>two</h1>")
    plain = site(tmp_path / "plain", "plain", "0.1.0", "plain", toml=True)
    for folder in (two, plain):
        uploaded = run("apps", "upload", folder, "--url", url, "--json")
        assert uploaded.exit_code == 0, uploaded.output
        assert json.loads(uploaded.stdout)["success"] is True

    listed = run("apps", "list", "--url", url)
    assert listed.exit_code == 0, listed.output
    assert "@acme/site" in listed.stdout and "1.0.0, 2.0.0" in listed.stdout
    assert "plain" in listed.stdout
    apps = {
        a["name"]: a["versions"]
        for a in json.loads(run("apps", "list", "--url", url, "--json").stdout)
    }
    assert apps == {"@acme/site": ["1.0.0", "2.0.0"], "plain": ["0.1.0"]}

    assert run("apps", "remove", "@acme/site", "1.0.0", "--url", url).exit_code == 0
    assert run("apps", "remove", "plain", "--url", url).stdout == "removed app plain\n"
    apps = {
        a["name"]: a["versions"]
        for a in json.loads(run("apps", "list", "--url", url, "--json").stdout)
    }
    assert apps == {"@acme/site": ["2.0.0"]}
    gone = run("apps", "remove", "@acme/site", "1.0.0", "--url", url)
    assert gone.exit_code == 1 and "error: VERSION_NOT_FOUND: " in gone.stderr
    assert run("apps", "remove", "@acme/site", "--url", url).exit_code == 0
    assert run("apps", "list", "--url", url).stdout == "no apps installed\n"
    missing = run("apps", "remove", "@acme/site", "--url", url)
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: APP_NOT_FOUND: App @acme/site not found")
    assert run("apps", "remove", "../x", "--url", url).exit_code == 2  # refused locally

    big = tmp_path / "big.tgz"
    big.write_bytes(b"\x1f\x8b" + os.urandom(2_000_000))
    too_big = run("apps", "upload", big, "--url", url)
    assert too_big.exit_code == 1
    assert "error: ARCHIVE_TOO_LARGE: " in too_big.stderr, too_big.output


# -- the wire, against a stub ----------------------------------------------------------


class Stub(BaseHTTPRequestHandler):
    """Records each request; answers from `answers[(method, path)]`, else success."""

    seen: list[dict] = []
    answers: dict[tuple[str, str], tuple[int, str, bytes]] = {}

    def handle_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            received += len(self.rfile.read(min(65536, length - received)))
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
                "body": received,
            }
        )
        status, kind, body = self.answers.get(
            (self.command, self.path), (200, "application/json", b'{"success": true}')
        )
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = handle_one

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, list[dict], dict]]:
    Stub.seen, Stub.answers = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", Stub.seen, Stub.answers
    server.shutdown()
    server.server_close()


def test_headers_names_in_paths_and_error_answers(stub):
    url, seen, answers = stub
    answers[("GET", "/api/apps/")] = (
        401,
        "application/json",
        b'{"error": {"code": "UNAUTHORIZED", "message": "bad key"}}',
    )
    answers[("GET", "/api/plugins/loaded")] = (502, "text/html", b"<html>Bad gateway</html>")
    answers[("GET", "/api/plugins/")] = (200, "text/html", b"<html>hi</html>")

    result = run("apps", "list", "--url", url + "/", "--api-key", "s3cret")
    assert result.exit_code == 1
    assert result.stderr == "error: UNAUTHORIZED: bad key\n"
    headers = seen[-1]["headers"]
    assert headers["Authorization"] == "Bearer s3cret" and headers["X-API-Key"] == "s3cret"
    assert headers["X-Courtyard-Internal"] == "true"
    run("apps", "list", "--url", url, env={"COURTYARD_API_KEY": "from-env"})
    assert seen[-1]["headers"]["X-API-Key"] == "from-env"
    run("apps", "list", "--url", url)
    assert "Authorization" not in seen[-1]["headers"] and "X-API-Key" not in seen[-1]["headers"]

    bad_gateway = run("plugins", "loaded", "--url", url)
    assert bad_gateway.exit_code == 1
    assert bad_gateway.stderr == (
        f"error: HTTP_502: GET {url}/api/plugins/loaded answered 502 Bad Gateway: "
        "<html>Bad gateway</html>\n"
    )
    not_json = run("plugins", "list", "--url", url)
    assert not_json.exit_code == 1 and "error: BAD_RESPONSE: " in not_json.stderr

    for args, path in [
        (("plugins", "remove", "@acme/hello"), "/api/plugins/%40acme%2Fhello"),
        (("apps", "remove", "@acme/site"), "/api/apps/@acme/site"),
        (("apps", "remove", "plain", "1.0.0+b1"), "/api/apps/_/plain/1.0.0%2Bb1"),
    ]:
        result = run(*args, "--url", url)
        assert result.exit_code == 0, result.output
        assert (seen[-1]["method"], seen[-1]["path"]) == ("DELETE", path)
    run("plugins", "reload", "--url", url + "/behind/a/proxy")
    assert (seen[-1]["method"], seen[-1]["path"]) == ("POST", "/behind/a/proxy/api/plugins/reload")


def test_uploads_stream_in_chunks_with_a_progress_bar_only_on_a_terminal(
    stub, tmp_path, monkeypatch
):
    url, seen, answers = stub
    answers[("POST", "/api/apps/upload?overwrite=true")] = (
        200,
        "application/json",
        b'{"success": true, "data": {"app": {"name": "a", "version": "1", "installedAt": "/x"}}}',
    )
    archive = tmp_path / "big.tgz"
    archive.write_bytes(os.urandom(3_000_000))
    reads: list[int] = []
    original = client.ProgressReader.read

    def spy(self, size=-1):
        chunk = original(self, size)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(client.ProgressReader, "read", spy)

    quiet = run("apps", "upload", archive, "--overwrite", "--url", url)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "uploaded app a 1 to /x\n" and quiet.stderr == ""
    assert sum(reads) == 3_000_000 and max(reads) <= 64 * 1024  # never the whole file
    request = seen[-1]
    assert int(request["headers"]["Content-Length"]) == request["body"] > 3_000_000
    assert request["headers"]["Content-Type"].startswith("multipart/form-data")

    shown = run("apps", "upload", archive, "--overwrite", "--url", url, env={"FORCE_COLOR": "1"})
    assert shown.exit_code == 0, shown.output
    assert "big.tgz" in shown.stderr  # rich's bar, on what it takes for a terminal
    scripted = run(
        "apps", "upload", archive, "--overwrite", "--url", url, "--json", env={"FORCE_COLOR": "1"}
    )
    assert scripted.stderr == "" and json.loads(scripted.stdout)["success"] is True


def test_unreachable_server_and_bad_urls_are_clear_messages():
    url = f"http://127.0.0.1:{free_port()}"
    result = run("plugins", "loaded", "--url", url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: CONNECTION_FAILED: cannot connect to {url}: ")
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    bad = run("apps", "list", "--url", "ftp://example.com")
    assert bad.exit_code == 2 and "must be an http:// or https:// URL" in bad.output
