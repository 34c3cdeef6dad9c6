"""POST /api/plugins/upload and POST /api/apps/upload end to end, in process (seed 000).

The happy paths as the seed documents them, every documented error, a corpus of hostile
archives that both endpoints must refuse without leaving a trace, and concurrent uploads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import stat
import tarfile
import threading
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from archive_kit import (
    Member,
    MiB,
    ZipEntry,
    patch_zip,
    tar_bytes,
    tar_dir,
    tar_file,
    tar_flood,
    tar_special,
    tgz_bytes,
    tree_state,
    zip_bytes,
    zip_entry,
)
from courtyard.core import uploads as uploads_module
from courtyard.testing import write_plugin

ENDPOINTS = {"plugin": "/api/plugins/upload", "app": "/api/apps/upload"}
BOTH = pytest.mark.parametrize("endpoint", list(ENDPOINTS))

# -- helpers: what goes in an archive --------------------------------------------------

Files = dict[str, bytes]

PLUGIN_PY = """\
from courtyard_sdk import Blueprint, PluginContext, hookimpl

MESSAGE = {message!r}


@hookimpl
def courtyard_routes(ctx: PluginContext) -> Blueprint:
    bp = Blueprint("uploaded", __name__)

    @bp.get("/")
    async def index() -> dict:
        return {{"message": MESSAGE}}

    return bp
"""


def plugin_files(name: str, version: str = "1.0.0", message: str = "hello") -> Files:
    """A plugin with a route at its base answering {"message": message}."""
    manifest = f'name = "{name}"\nversion = "{version}"\nmodule = "plugin"\n'
    return {
        "plugin.toml": manifest.encode(),
        "plugin.py": PLUGIN_PY.format(message=message).encode(),
    }


def app_files(name: str, version: str, page: str | None = None, **courtyard: Any) -> Files:
    """A static app: package.json and an index.html saying `page`."""
    package: dict[str, Any] = {"name": name, "version": version}
    if courtyard:
        package["courtyard"] = courtyard
    return {
        "package.json": json.dumps(package).encode(),
        "index.html": (page or f"<h1>{name} {version}</h1>").encode(),
    }


def pack(files: Files, filename: str, prefix: str = "") -> bytes:
    """`files` as the kind of archive `filename` announces, every name under `prefix`."""
    if filename.endswith(".zip"):
        return zip_bytes([(prefix + name, data) for name, data in files.items()])
    return tgz_bytes([tar_file(prefix + name, data) for name, data in files.items()])


def racer(name: str, version: str) -> Files:
    """A plugin-and-app version with a file only it has and a few MB to extract."""
    return {
        **plugin_files(name, version, message=version),
        **app_files(name, version, page=version),
        f"only-{version}.txt": version.encode(),
        "big.bin": random.Random(version).randbytes(2 * MiB),
    }


INDEX = b"<h1>x</h1>"


# -- helpers: hostile archives ---------------------------------------------------------

# What every hostile archive carries besides its trick: valid manifests for both endpoints,
# so that the trick, and nothing else, is why it is refused (test_corpus_base_installs).
BASE: Files = {
    "plugin.toml": b'name = "evil"\nversion = "1.0.0"\n',
    "package.json": b'{"name": "evil", "version": "1.0.0"}',
    "index.html": b"<h1>evil</h1>",
}


def tgz(*extra: Member) -> bytes:
    return tgz_bytes([*(tar_file(n, d) for n, d in BASE.items()), *extra])


def zipped(*extra: ZipEntry) -> bytes:
    return zip_bytes([*BASE.items(), *extra])


def raw_tgz(before: bytes) -> bytes:
    """A gzip of raw tar blocks `before` the base members."""
    return gzip.compress(before + tar_bytes(tar_file(n, d) for n, d in BASE.items()))


def pax_name(name: str) -> Member:
    info, data = tar_file("placeholder.txt")
    info.pax_headers = {"path": name}  # a pax path keeps what ustar cannot (a NUL)
    return info, data


def zip_raw_name(name: bytes) -> bytes:
    """A zip whose entry has exactly the raw `name` (zipfile would cut at a NUL)."""
    stand_in = b"#" * len(name)
    return zipped((stand_in.decode(), b"x")).replace(stand_in, name)


def zip_with_method(method: int) -> bytes:
    info = zip_entry("data.txt")
    info.compress_type = method
    return zipped((info, b"x" * 100))


def declared_size(data: bytes, name: str, size: int) -> bytes:
    return patch_zip(data, name, "size", size)


def lying_tgz() -> bytes:
    """A tar whose last member's header says 1000 bytes where 10 follow."""
    raw = tar_bytes([*(tar_file(n, d) for n, d in BASE.items()), tar_file("big.bin", b"y" * 1000)])
    return gzip.compress(raw[: raw.index(b"y" * 1000) + 10])


def huge_header_tgz() -> bytes:
    """A tar header that claims a 600 MiB member (over upload_max_extracted_bytes)."""
    info = tarfile.TarInfo("huge.bin")
    info.size = 600 * MiB
    return raw_tgz(info.tobuf(tarfile.PAX_FORMAT))


def oversized_pax_tgz() -> bytes:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 2 * MiB
    return raw_tgz(pax.tobuf(tarfile.USTAR_FORMAT) + bytes(2 * MiB))


def chained_pax_tgz() -> bytes:
    record = b"20 comment=aaaaaaaa\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    return raw_tgz((pax.tobuf(tarfile.USTAR_FORMAT) + record.ljust(512, b"\0")) * 2000)


def zeros_zip(size: int) -> bytes:
    return zipped(("zeros.bin", bytes(size)))


def spread_bomb_zip() -> bytes:
    return zipped(*((f"z{i}.bin", bytes(512 * 1024)) for i in range(20)))  # each under grace


def flood_tgz() -> bytes:
    return gzip.compress(tar_flood(100_000), compresslevel=1)


def flood_zip() -> bytes:
    return zip_bytes((zipfile.ZipInfo(f"f{i:x}"), b"") for i in range(100_000))


RANDOM = random.Random(42).randbytes(20_000)
NFC, NFD = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
LINK, FIFO, CHR = stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644


@dataclass(frozen=True)
class Hostile:
    """A hostile upload and the refusal both endpoints owe it.

    `build` gets the path of a folder outside the install directories (absolute names and
    links aim there); `cached` builds are made once per module (see `heavy_archives`).
    """

    id: str
    filename: str
    build: Callable[[Path], bytes]
    code: str
    status: int = 400
    cached: bool = False


T, Z = "evil.tgz", "evil.zip"


# -- helpers: talking to the runtime ---------------------------------------------------


async def upload(
    client: httpx.AsyncClient,
    endpoint: str,
    filename: str,
    data: bytes,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        ENDPOINTS[endpoint],
        params=params,
        files={"file": (filename, data, "application/octet-stream")},
    )


def assert_error(answer: httpx.Response, status: int, code: str) -> None:
    """`answer` is the seed's error shape, {"error": {"code", "message"}}, with this
    status and code."""
    body = answer.json()
    error = body.get("error") if isinstance(body, dict) else None
    found = error.get("code") if isinstance(error, dict) else None
    assert (answer.status_code, found) == (status, code), answer.text
    assert list(body) == ["error"] and list(error) == ["code", "message"], body
    assert isinstance(error["message"], str) and error["message"]


async def listings(client: httpx.AsyncClient) -> tuple[Any, Any]:
    """What GET /api/plugins/ and GET /api/apps/ answer."""
    plugins, apps = await client.get("/api/plugins/"), await client.get("/api/apps/")
    assert plugins.status_code == apps.status_code == 200
    return plugins.json(), apps.json()


def files_of(root: Path) -> Files:
    """The files under `root` (Python's own __pycache__ left out)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def hidden_entries(*folders: Path) -> list[Path]:
    """Staging folders and backups (dot entries) left in `folders`."""
    return [p for folder in folders for p in folder.iterdir() if p.name.startswith(".")]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def chunked(data: bytes, size: int = 4096) -> Callable[[], Any]:
    async def chunks() -> Any:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return chunks


async def refuse_hostile(
    rt: Any, endpoint: str, case: Hostile, tmp_path: Path, heavy: dict[str, bytes]
) -> None:
    """Upload `case` to `endpoint`: refused with its code, and not a byte changed."""
    data = heavy[case.id] if case.cached else case.build(tmp_path / "outside")
    before_tree = tree_state(tmp_path)
    before_lists = await listings(rt.client)
    answer = await upload(rt.client, endpoint, case.filename, data)
    assert_error(answer, case.status, case.code)
    assert tree_state(tmp_path) == before_tree  # nothing written, staging folder gone
    assert await listings(rt.client) == before_lists  # nothing installed
    assert (await rt.client.get("/evil@0.9.0/")).text == "<h1>evil 0.9.0</h1>"


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heavy_archives() -> dict[str, bytes]:
    """The corpus's costly archives (bombs, 100 000 entries), built once for the module."""
    return {case.id: case.build(Path("/nonexistent")) for case in CORPUS if case.cached}


@pytest.fixture
async def victim(courtyard, tmp_path: Path, plugin_dir: Path) -> Any:
    """A runtime with plugin `evil` 0.9.0 and app `evil` 0.9.0 installed, and a folder
    `outside` (with a file in it) that hostile archives aim at."""
    write_plugin(plugin_dir, "evil", 'version = "0.9.0"\n')
    (plugin_dir / "evil" / "data.txt").write_text("kept")
    app = tmp_path / "apps" / "evil" / "0.9.0"
    app.mkdir(parents=True)
    (app / "package.json").write_text('{"name": "evil", "version": "0.9.0"}')
    (app / "index.html").write_text("<h1>evil 0.9.0</h1>")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "canary.txt").write_text("untouched")
    rt = await courtyard(entry_points=False)
    plugins, apps = await listings(rt.client)
    assert [(p["name"], p["version"]) for p in plugins] == [("evil", "0.9.0")]
    assert [(a["name"], a["versions"]) for a in apps] == [("evil", ["0.9.0"])]
    return rt


@pytest.fixture
def side_by_side(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make two concurrent uploads extract at the same moment (each waits for the other,
    for a few seconds at most), so that their installs really race; the list counts the
    times they met."""
    barrier, met = threading.Barrier(2), []
    extract = uploads_module.extract

    def meet_then_extract(*args: Any) -> None:
        try:
            barrier.wait(timeout=5)
            met.append(1)
        except threading.BrokenBarrierError:
            barrier.reset()
        extract(*args)

    monkeypatch.setattr(uploads_module, "extract", meet_then_extract)
    return met


# -- happy paths: plugins --------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "name", "prefix"),
    [
        ("hello-up-1.0.0.tgz", "hello-up", ""),
        ("hello-up-1.0.0.tar.gz", "hello-up", ""),
        ("hello-up-1.0.0.zip", "hello-up", ""),
        ("hello-up-1.0.0.tgz", "hello-up", "package/"),  # what `npm pack` makes
        ("hello-up-1.0.0.zip", "hello-up", "package/"),
        ("acme-x-1.0.0.tgz", "@acme/x", "package/"),
        ("acme-x-1.0.0.zip", "@acme/x", ""),
        ("ACME-X-1.0.0.TAR.GZ", "@acme/x", ""),
    ],
)
async def test_plugin_upload_installs_loads_and_serves(
    courtyard, plugin_dir: Path, filename: str, name: str, prefix: str
) -> None:
    rt = await courtyard(entry_points=False)
    files = plugin_files(name, "1.0.0", message=f"hi from {name}")
    answer = await upload(rt.client, "plugin", filename, pack(files, filename, prefix))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "success": True,
        "data": {
            "plugin": {
                "name": name,
                "version": "1.0.0",
                "installedAt": str(plugin_dir / name),
            }
        },
    }
    assert files_of(plugin_dir / name) == files
    assert mode_of(plugin_dir / name / "plugin.toml") == 0o644
    loaded = (await rt.client.get("/api/plugins/loaded")).json()
    base = "/" + name.rsplit("/", 1)[-1]
    assert [(p["name"], p["base"]) for p in loaded] == [(name, base)]
    listed = (await rt.client.get("/api/plugins/")).json()
    assert [(p["name"], p["version"], p["status"]) for p in listed] == [(name, "1.0.0", "loaded")]
    served = await rt.client.get(f"{base}/")
    assert (served.status_code, served.json()) == (200, {"message": f"hi from {name}"})
    assert hidden_entries(plugin_dir, *plugin_dir.glob("@*")) == []


async def test_plugin_upload_replaces_the_previous_version(courtyard, plugin_dir: Path) -> None:
    rt = await courtyard(entry_points=False)
    one = {**plugin_files("swap", "1.0.0", message="one"), "only-in-one.txt": b"1"}
    two = {**plugin_files("swap", "2.0.0", message="two"), "only-in-two.txt": b"2"}
    assert (await upload(rt.client, "plugin", "swap.tgz", pack(one, "swap.tgz"))).is_success
    assert (await rt.client.get("/swap/")).json() == {"message": "one"}

    answer = await upload(rt.client, "plugin", "swap.zip", pack(two, "swap.zip"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["plugin"] == {
        "name": "swap",
        "version": "2.0.0",
        "installedAt": str(plugin_dir / "swap"),
    }
    assert (await rt.client.get("/swap/")).json() == {"message": "two"}
    assert files_of(plugin_dir / "swap") == two  # nothing of version one is left
    listed = (await rt.client.get("/api/plugins/")).json()
    assert [(p["name"], p["version"]) for p in listed] == [("swap", "2.0.0")]
    assert hidden_entries(plugin_dir) == []  # no staging folder, no backup


async def test_plugin_that_fails_to_load_keeps_the_previous_version(
    courtyard, plugin_dir: Path
) -> None:
    rt = await courtyard(entry_points=False)
    good = plugin_files("fragile", "1.0.0", message="good")
    assert (await upload(rt.client, "plugin", "f.tgz", pack(good, "f.tgz"))).is_success
    assert (await rt.client.get("/fragile/")).json() == {"message": "good"}
    before = tree_state(plugin_dir)

    broken = {**plugin_files("fragile", "2.0.0"), "plugin.py": b"raise RuntimeError('no')\n"}
    answer = await upload(rt.client, "plugin", "f.tgz", pack(broken, "f.tgz"))
    assert_error(answer, 422, "PLUGIN_LOAD_FAILED")
    assert tree_state(plugin_dir) == before
    assert (await rt.client.get("/fragile/")).json() == {"message": "good"}


async def test_new_plugin_that_fails_to_load_leaves_no_trace(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    broken = {**plugin_files("@acme/broken"), "plugin.py": b"raise RuntimeError('no')\n"}
    answer = await upload(rt.client, "plugin", "b.tgz", pack(broken, "b.tgz", "package/"))
    assert_error(answer, 422, "PLUGIN_LOAD_FAILED")
    assert "RuntimeError: no" in answer.json()["error"]["message"]
    assert tree_state(tmp_path) == before  # not even the @acme folder
    assert (await rt.client.get("/api/plugins/")).json() == []


async def test_the_upload_file_name_is_never_used_as_a_path(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False)
    data = pack(plugin_files("named"), "x.tgz")
    answer = await upload(rt.client, "plugin", "../../../evil/x.tgz", data)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["plugin"]["installedAt"] == str(tmp_path / "plugins" / "named")
    assert not (tmp_path.parent / "evil").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("evil", "x.tgz")]


# -- happy paths: apps -----------------------------------------------------------------


async def test_app_upload_installs_versions_listed_in_order(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False)
    apps = tmp_path / "apps"
    uploads = [
        ("my-app", "1.10.0", "my-app.tgz", ""),
        ("my-app", "1.0.0", "my-app.zip", ""),
        ("my-app", "2.0.0-rc.1", "my-app.tar.gz", "package/"),
        ("my-app", "1.2.0", "my-app.zip", "package/"),
        ("@company/dash", "2.0.0", "dash.tgz", "package/"),
    ]
    for name, version, filename, prefix in uploads:
        files = app_files(name, version)
        answer = await upload(rt.client, "app", filename, pack(files, filename, prefix))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "success": True,
            "data": {
                "app": {
                    "name": name,
                    "version": version,
                    "installedAt": str(apps / name / version),
                }
            },
        }
        assert files_of(apps / name / version) == files

    assert (await rt.client.get("/api/apps/")).json() == [
        {"name": "@company/dash", "path": str(apps / "@company" / "dash"), "versions": ["2.0.0"]},
        {
            "name": "my-app",
            "path": str(apps / "my-app"),
            "versions": ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1"],
        },
    ]
    assert hidden_entries(apps, apps / "@company", apps / "my-app") == []


async def test_static_app_is_served_by_name_and_by_version(courtyard) -> None:
    rt = await courtyard(entry_points=False)
    for version in ("1.0.0", "1.1.0"):
        files = app_files("site", version, page=f"<p>site {version}</p>")
        assert (await upload(rt.client, "app", "site.zip", pack(files, "site.zip"))).is_success

    latest = await rt.client.get("/site/")
    assert (latest.status_code, latest.text) == (200, "<p>site 1.1.0</p>")
    assert latest.headers["content-type"].startswith("text/html")
    pinned = await rt.client.get("/site@1.0.0/")
    assert (pinned.status_code, pinned.text) == (200, "<p>site 1.0.0</p>")
    assert (await rt.client.get("/site@1.0.0/index.html")).text == "<p>site 1.0.0</p>"


async def test_same_app_version_is_409_unless_overwrite(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False)
    first = app_files("fixed", "1.0.0", page="first")
    assert (await upload(rt.client, "app", "a.tgz", pack(first, "a.tgz"))).is_success
    assert (await rt.client.get("/fixed@1.0.0/")).text == "first"
    before = tree_state(tmp_path)

    second = {**app_files("fixed", "1.0.0", page="second"), "extra.txt": b"new"}
    answer = await upload(rt.client, "app", "a.zip", pack(second, "a.zip"))
    assert_error(answer, 409, "VERSION_EXISTS")
    assert tree_state(tmp_path) == before  # and no staging folder left behind
    assert (await rt.client.get("/fixed@1.0.0/")).text == "first"

    for overwrite in ("true", "TRUE", "1"):
        answer = await upload(
            rt.client, "app", "a.zip", pack(second, "a.zip"), {"overwrite": overwrite}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["app"]["version"] == "1.0.0"
    assert files_of(tmp_path / "apps" / "fixed" / "1.0.0") == second
    assert (await rt.client.get("/fixed@1.0.0/")).text == "second"
    assert (await rt.client.get("/api/apps/")).json()[0]["versions"] == ["1.0.0"]
    assert hidden_entries(tmp_path / "apps", tmp_path / "apps" / "fixed") == []

    answer = await upload(rt.client, "app", "a.zip", pack(first, "a.zip"), {"overwrite": "false"})
    assert_error(answer, 409, "VERSION_EXISTS")


# -- documented errors -----------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({}, id="no-body"),
        pytest.param({"files": {"other": ("a.tgz", b"x")}}, id="other-part"),
        pytest.param({"data": {"file": "not a file"}}, id="plain-field"),
        pytest.param({"files": {"file": ("", b"x")}}, id="no-filename"),
        pytest.param({"content": b"\x1f\x8b raw body"}, id="raw-body"),
    ],
)
async def test_no_file_provided(
    courtyard, tmp_path: Path, endpoint: str, request_kwargs: dict[str, Any]
) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    answer = await rt.client.post(ENDPOINTS[endpoint], **request_kwargs)
    assert_error(answer, 400, "NO_FILE_PROVIDED")
    assert tree_state(tmp_path) == before


@BOTH
@pytest.mark.parametrize(
    "filename", ["x.tar", "x.gz", "x.rar", "x.zip.exe", "x.tgz.txt", "zip", "x.7z", "x.whl"]
)
async def test_wrong_extension_is_invalid_file_type(
    courtyard, tmp_path: Path, endpoint: str, filename: str
) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    data = pack({**plugin_files("ext"), **app_files("ext", "1.0.0")}, "x.tgz")
    assert_error(await upload(rt.client, endpoint, filename, data), 400, "INVALID_FILE_TYPE")
    assert tree_state(tmp_path) == before


async def test_no_plugin_dirs(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False, plugin_dirs=[])
    before = tree_state(tmp_path)
    answer = await upload(rt.client, "plugin", "p.tgz", pack(plugin_files("p"), "p.tgz"))
    assert_error(answer, 400, "NO_PLUGIN_DIRS")
    assert tree_state(tmp_path) == before


async def test_no_worker_dirs(courtyard, tmp_path: Path) -> None:
    rt = await courtyard(entry_points=False, app_dirs=[])
    before = tree_state(tmp_path)
    answer = await upload(rt.client, "app", "a.tgz", pack(app_files("a", "1.0.0"), "a.tgz"))
    assert_error(answer, 400, "NO_WORKER_DIRS")
    assert tree_state(tmp_path) == before


@BOTH
@pytest.mark.parametrize("origin", [None, "http://evil.test", "null"])
async def test_upload_without_a_matching_origin_is_csrf_failed(
    courtyard, tmp_path: Path, endpoint: str, origin: str | None
) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    files = {**plugin_files("csrf"), **app_files("csrf", "1.0.0")}
    request = rt.client.build_request(
        "POST", ENDPOINTS[endpoint], files={"file": ("c.tgz", pack(files, "c.tgz"))}
    )
    del request.headers["Origin"]
    if origin is not None:
        request.headers["Origin"] = origin
    assert_error(await rt.client.send(request), 403, "CSRF_FAILED")
    assert tree_state(tmp_path) == before


@BOTH
async def test_internal_header_bypasses_csrf(courtyard, endpoint: str) -> None:
    rt = await courtyard(entry_points=False)
    files = {**plugin_files("inside"), **app_files("inside", "1.0.0")}
    request = rt.client.build_request(
        "POST",
        ENDPOINTS[endpoint],
        files={"file": ("c.tgz", pack(files, "c.tgz"))},
        headers={"X-Buntime-Internal": "true"},
    )
    del request.headers["Origin"]
    answer = await rt.client.send(request)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "name", ["../../x", "@scope/../x", "Bad", "../plugins", "/abs", "a/b", "", "@/x", ".x"]
)
async def test_plugin_with_invalid_name_is_path_traversal(
    courtyard, tmp_path: Path, name: str
) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    files = {"plugin.toml": f'name = "{name}"\nversion = "1.0.0"\n'.encode()}
    answer = await upload(rt.client, "plugin", "x.tgz", pack(files, "x.tgz"))
    assert_error(answer, 400, "PATH_TRAVERSAL")
    assert tree_state(tmp_path) == before
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("name", ["../../x", "@scope/../x", "Bad", "/abs", "a/b", "", 7, None])
async def test_app_with_invalid_name_is_path_traversal(
    courtyard, tmp_path: Path, name: object
) -> None:
    rt = await courtyard(entry_points=False)
    (tmp_path / "apps").mkdir()
    before = tree_state(tmp_path)
    files = app_files("placeholder", "1.0.0")
    files["package.json"] = json.dumps({"name": name, "version": "1.0.0"}).encode()
    answer = await upload(rt.client, "app", "x.zip", pack(files, "x.zip"))
    assert_error(answer, 400, "PATH_TRAVERSAL")
    assert tree_state(tmp_path) == before
    assert not (tmp_path.parent / "x").exists()


async def test_plugin_without_a_name_is_path_traversal(courtyard) -> None:
    """An absent name is an invalid package name: PATH_TRAVERSAL, as for apps."""
    rt = await courtyard(entry_points=False)
    files = {"plugin.toml": b'version = "1.0.0"\n'}
    answer = await upload(rt.client, "plugin", "x.tgz", pack(files, "x.tgz"))
    assert_error(answer, 400, "PATH_TRAVERSAL")


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"README.md": b"no manifest"}, id="no-plugin-toml"),
        pytest.param({"package/README.md": b"no manifest"}, id="npm-layout-no-plugin-toml"),
        pytest.param({"plugin.toml": b'name = "x"\nversion = '}, id="not-toml"),
        pytest.param({"plugin.toml": b'name = "x"\nversion = "not a version"\n'}, id="bad-version"),
        pytest.param({"plugin.toml": b'name = "x"\nbase = "relative"\n'}, id="bad-base"),
        pytest.param({"plugin.toml": b'name = "\xff"\n'}, id="not-utf8"),
        pytest.param({"plugin.toml/inner.txt": b"a folder"}, id="manifest-is-a-folder"),
    ],
)
async def test_plugin_with_invalid_manifest(courtyard, tmp_path: Path, files: Files) -> None:
    rt = await courtyard(entry_points=False)
    before = tree_state(tmp_path)
    answer = await upload(rt.client, "plugin", "x.zip", pack(files, "x.zip"))
    assert_error(answer, 400, "INVALID_MANIFEST")
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"package.json": b'{"name": "x"}', "index.html": INDEX}, id="no-version"),
        pytest.param(
            {"package.json": b'{"name": "x", "version": 1}', "index.html": INDEX},
            id="version-not-a-string",
        ),
        pytest.param(
            {"package.json": b'{"name": "x", "version": "latest"}', "index.html": INDEX},
            id="version-not-a-version",
        ),
        pytest.param({"package.json": b"{name: x}", "index.html": INDEX}, id="not-json"),
        pytest.param({"package.json": b'["x", "1.0.0"]', "index.html": INDEX}, id="not-object"),
        pytest.param({"package.json": b'{"name": "x", "version": "1.0.0"}'}, id="no-index"),
        pytest.param(
            app_files("x", "1.0.0", index="../../../etc/passwd"), id="index-outside-the-app"
        ),
        pytest.param(app_files("x", "1.0.0", entry="not an entry"), id="bad-entry"),
        pytest.param(app_files("x", "1.0.0", unknown=True), id="unknown-setting"),
        pytest.param({"app.toml": b'name = "x"\n', "index.html": INDEX}, id="app-toml-no-version"),
        pytest.param({"index.html": INDEX}, id="no-manifest"),
    ],
)
async def test_app_with_invalid_manifest(courtyard, tmp_path: Path, files: Files) -> None:
    rt = await courtyard(entry_points=False)
    (tmp_path / "apps").mkdir()
    before = tree_state(tmp_path)
    answer = await upload(rt.client, "app", "x.tgz", pack(files, "x.tgz"))
    assert_error(answer, 400, "INVALID_MANIFEST")
    assert tree_state(tmp_path) == before


@BOTH
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_upload_over_the_limit_is_413(
    courtyard, tmp_path: Path, endpoint: str, streamed: bool
) -> None:
    rt = await courtyard(entry_points=False, upload_max_bytes=10_000)
    (tmp_path / "apps").mkdir()
    files = {
        **plugin_files("big"),
        **app_files("big", "1.0.0"),
        "noise.bin": random.Random(7).randbytes(20_000),
    }
    before = tree_state(tmp_path)
    boundary = "courtyard-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    body += pack(files, "big.zip") + f"\r\n--{boundary}--\r\n".encode()
    answer = await rt.client.post(
        ENDPOINTS[endpoint],
        content=chunked(body)() if streamed else body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(answer, 413, "ARCHIVE_TOO_LARGE")
    assert tree_state(tmp_path) == before

    small = pack({**plugin_files("small"), **app_files("small", "1.0.0")}, "small.zip")
    assert len(small) < 5_000
    answer = await upload(rt.client, endpoint, "small.zip", small)
    assert answer.status_code == 200, answer.text


@BOTH
@pytest.mark.parametrize("filename", ["limits.tgz", "limits.zip"])
async def test_extraction_limits_come_from_the_settings(
    courtyard, tmp_path: Path, endpoint: str, filename: str
) -> None:
    rt = await courtyard(
        entry_points=False, upload_max_extracted_bytes=50_000, upload_max_entries=8
    )
    (tmp_path / "apps").mkdir()
    before = tree_state(tmp_path)
    base = {**plugin_files("limits"), **app_files("limits", "1.0.0")}  # 4 files
    noise = random.Random(3)
    too_big = {**base, "a.bin": noise.randbytes(30_000), "b.bin": noise.randbytes(30_000)}
    answer = await upload(rt.client, endpoint, filename, pack(too_big, filename))
    assert_error(answer, 413, "ARCHIVE_TOO_LARGE")
    too_many = {**base, **{f"f{i}.txt": b"x" for i in range(5)}}  # 9 entries
    answer = await upload(rt.client, endpoint, filename, pack(too_many, filename))
    assert_error(answer, 400, "TOO_MANY_ENTRIES")
    assert tree_state(tmp_path) == before

    just_enough = {**base, **{f"f{i}.txt": b"x" for i in range(4)}}  # 8 entries
    answer = await upload(rt.client, endpoint, filename, pack(just_enough, filename))
    assert answer.status_code == 200, answer.text


# -- the hostile corpus ----------------------------------------------------------------

CORPUS = [
    # escaping the folder
    Hostile("tgz-zip-slip", T, lambda o: tgz(tar_file("../evil.txt")), "PATH_TRAVERSAL"),
    Hostile("zip-zip-slip", Z, lambda o: zipped(("../evil.txt", b"x")), "PATH_TRAVERSAL"),
    Hostile(
        "tgz-slip-under-package",
        T,
        lambda o: tgz(tar_file("package/../../evil.txt")),
        "PATH_TRAVERSAL",
    ),
    Hostile(
        "zip-deep-slip", Z, lambda o: zipped(("a/b/../../../evil.txt", b"x")), "PATH_TRAVERSAL"
    ),
    Hostile("tgz-absolute", T, lambda o: tgz(tar_file(str(o / "evil.txt"))), "PATH_TRAVERSAL"),
    Hostile("zip-absolute", Z, lambda o: zipped((str(o / "evil.txt"), b"x")), "PATH_TRAVERSAL"),
    Hostile(
        "zip-backslash-slip", Z, lambda o: zipped(("..\\..\\evil.txt", b"x")), "PATH_TRAVERSAL"
    ),
    Hostile("tgz-backslash", T, lambda o: tgz(tar_file("lib\\evil.txt")), "PATH_TRAVERSAL"),
    Hostile("tgz-nul-in-name", T, lambda o: tgz(pax_name("evil.txt\x00.json")), "PATH_TRAVERSAL"),
    Hostile("zip-nul-in-name", Z, lambda o: zip_raw_name(b"evil.txt\x00.json"), "PATH_TRAVERSAL"),
    Hostile("zip-drive-letter", Z, lambda o: zipped(("C:/evil.txt", b"x")), "PATH_TRAVERSAL"),
    Hostile("tgz-drive-letter", T, lambda o: tgz(tar_file("c:evil.txt")), "PATH_TRAVERSAL"),
    Hostile("tgz-terminal-escape", T, lambda o: tgz(tar_file("a\x1b[31m.txt")), "PATH_TRAVERSAL"),
    # links and special files
    Hostile(
        "tgz-symlink",
        T,
        lambda o: tgz(tar_special("link", tarfile.SYMTYPE, "/etc/passwd")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-hardlink",
        T,
        lambda o: tgz(tar_special("hard", tarfile.LNKTYPE, "/etc/passwd")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-hardlink-inside",
        T,
        lambda o: tgz(tar_special("hard", tarfile.LNKTYPE, "index.html")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-write-through-symlink",
        T,
        lambda o: tgz(tar_special("a", tarfile.SYMTYPE, str(o)), tar_file("a/x", b"pwned")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-write-through-symlink-to-tmp",
        T,
        lambda o: tgz(tar_special("a", tarfile.SYMTYPE, "/tmp"), tar_file("a/x", b"pwned")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "zip-write-through-symlink",
        Z,
        lambda o: zipped((zip_entry("a", LINK), str(o).encode()), ("a/x", b"pwned")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "zip-symlink-attr",
        Z,
        lambda o: zipped((zip_entry("link", LINK), b"/etc/passwd")),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-char-device",
        T,
        lambda o: tgz(tar_special("null", tarfile.CHRTYPE)),
        "UNSAFE_ENTRY",
    ),
    Hostile(
        "tgz-block-device",
        T,
        lambda o: tgz(tar_special("sda", tarfile.BLKTYPE)),
        "UNSAFE_ENTRY",
    ),
    Hostile("tgz-fifo", T, lambda o: tgz(tar_special("pipe", tarfile.FIFOTYPE)), "UNSAFE_ENTRY"),
    Hostile("zip-fifo-attr", Z, lambda o: zipped((zip_entry("pipe", FIFO), b"")), "UNSAFE_ENTRY"),
    Hostile(
        "zip-char-device-attr", Z, lambda o: zipped((zip_entry("null", CHR), b"")), "UNSAFE_ENTRY"
    ),
    Hostile("tgz-unknown-member-type", T, lambda o: tgz(tar_special("vol", b"V")), "UNSAFE_ENTRY"),
    # exhausting disk, memory or time
    Hostile("zip-bomb", Z, lambda o: zeros_zip(8 * MiB), "ARCHIVE_BOMB", cached=True),
    Hostile("zip-bomb-spread", Z, lambda o: spread_bomb_zip(), "ARCHIVE_BOMB", cached=True),
    Hostile(
        "tgz-bomb",
        T,
        lambda o: tgz(tar_file("zeros.bin", bytes(20 * MiB))),
        "ARCHIVE_BOMB",
        cached=True,
    ),
    Hostile(
        "zip-declares-huge-size",
        Z,
        lambda o: declared_size(zipped(("huge.bin", b"h" * 100)), "huge.bin", 600 * MiB),
        "ARCHIVE_BOMB",
    ),
    Hostile("tgz-declares-huge-size", T, lambda o: huge_header_tgz(), "ARCHIVE_TOO_LARGE", 413),
    Hostile("tgz-100k-entries", T, lambda o: flood_tgz(), "TOO_MANY_ENTRIES", cached=True),
    Hostile("zip-100k-entries", Z, lambda o: flood_zip(), "TOO_MANY_ENTRIES", cached=True),
    Hostile("tgz-oversized-pax-header", T, lambda o: oversized_pax_tgz(), "INVALID_ENTRY"),
    Hostile(
        "tgz-chained-pax-headers", T, lambda o: chained_pax_tgz(), "CORRUPT_ARCHIVE", cached=True
    ),
    # shadowing one file with another
    Hostile(
        "zip-duplicate-manifest",
        Z,
        lambda o: zipped(("plugin.toml", b'name = "other"\n')),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "tgz-duplicate", T, lambda o: tgz(tar_file("index.html", b"shadow")), "DUPLICATE_ENTRY"
    ),
    Hostile(
        "zip-case-collision",
        Z,
        lambda o: zipped(("A.txt", b"upper"), ("a.txt", b"lower")),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "tgz-case-collision",
        T,
        lambda o: tgz(tar_file("INDEX.HTML", b"shadow")),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "zip-unicode-collision",
        Z,
        lambda o: zipped((NFC, b"nfc"), (NFD, b"nfd")),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "tgz-unicode-collision",
        T,
        lambda o: tgz(tar_file(NFC, b"nfc"), tar_file(NFD, b"nfd")),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "tgz-file-then-folder",
        T,
        lambda o: tgz(tar_file("lib", b"file"), tar_file("lib/x.py", b"inside")),
        "DUPLICATE_ENTRY",
    ),
    Hostile(
        "tgz-folder-then-file",
        T,
        lambda o: tgz(tar_dir("lib"), tar_file("LIB", b"file")),
        "DUPLICATE_ENTRY",
    ),
    # names no filesystem should get
    Hostile("tgz-name-not-utf8", T, lambda o: tgz(tar_file("bad\udcff.txt")), "INVALID_ENTRY"),
    Hostile("zip-path-too-deep", Z, lambda o: zipped(("d/" * 40 + "f", b"x")), "INVALID_ENTRY"),
    Hostile("tgz-path-too-deep", T, lambda o: tgz(tar_file("d/" * 40 + "f")), "INVALID_ENTRY"),
    Hostile("tgz-path-too-long", T, lambda o: tgz(tar_file("x" * 300)), "INVALID_ENTRY"),
    Hostile("zip-path-too-long", Z, lambda o: zipped(("dir/" + "é" * 130, b"x")), "INVALID_ENTRY"),
    # zip features refused
    Hostile(
        "zip-encrypted-entry",
        Z,
        lambda o: patch_zip(zipped(("secret.txt", b"x")), "secret.txt", "flags", 0x1),
        "INVALID_ENTRY",
    ),
    Hostile("zip-bzip2", Z, lambda o: zip_with_method(zipfile.ZIP_BZIP2), "INVALID_ENTRY"),
    Hostile("zip-lzma", Z, lambda o: zip_with_method(zipfile.ZIP_LZMA), "INVALID_ENTRY"),
    # damaged or disguised
    Hostile("tgz-truncated", T, lambda o: tgz(tar_file("r.bin", RANDOM))[:3000], "CORRUPT_ARCHIVE"),
    Hostile("tgz-header-lies-about-size", T, lambda o: lying_tgz(), "CORRUPT_ARCHIVE"),
    Hostile(
        "zip-header-lies-about-size",
        Z,
        lambda o: declared_size(zipped(("lie.txt", b"z" * 5000)), "lie.txt", 10),
        "CORRUPT_ARCHIVE",
    ),
    Hostile("zip-truncated", Z, lambda o: zipped(("r.bin", RANDOM))[:-40], "CORRUPT_ARCHIVE"),
    Hostile("gzip-of-random-bytes", T, lambda o: gzip.compress(RANDOM), "CORRUPT_ARCHIVE"),
    Hostile("gzip-of-text", T, lambda o: gzip.compress(b"not a tar " * 100), "CORRUPT_ARCHIVE"),
    Hostile("gzip-header-only", T, lambda o: b"\x1f\x8b" + bytes(100), "CORRUPT_ARCHIVE"),
    Hostile("zip-that-is-a-tgz", Z, lambda o: tgz(), "INVALID_FILE_TYPE"),
    Hostile("tgz-that-is-a-zip", T, lambda o: zipped(), "INVALID_FILE_TYPE"),
    Hostile("tar-gz-that-is-text", "evil.tar.gz", lambda o: b"hello world", "INVALID_FILE_TYPE"),
    Hostile("zero-bytes", Z, lambda o: b"", "INVALID_FILE_TYPE"),
    Hostile("plain-tar-extension", "evil.tar", lambda o: tar_bytes([]), "INVALID_FILE_TYPE"),
    # manifests
    Hostile("tgz-empty", T, lambda o: tgz_bytes([]), "INVALID_MANIFEST"),
    Hostile("zip-empty", Z, lambda o: zip_bytes([]), "INVALID_MANIFEST"),
    Hostile(
        "bad-manifests",
        Z,
        lambda o: zip_bytes(
            [("plugin.toml", b"name = "), ("package.json", b"{"), ("index.html", b"x")]
        ),
        "INVALID_MANIFEST",
    ),
    Hostile(
        "manifests-name-outside",
        T,
        lambda o: tgz_bytes(
            [
                tar_file("plugin.toml", b'name = "../../evil"\n'),
                tar_file("package.json", b'{"name": "../../evil", "version": "1.0.0"}'),
                tar_file("index.html", b"x"),
            ]
        ),
        "PATH_TRAVERSAL",
    ),
]


# Through a whole runtime, the default run replays a representative case per refusal
# code and archive type; the rest of the corpus is marked slow (`pytest -m slow`, run by
# .ci/run). Every archive check is also unit tested on its own in test_archives.py, and
# the floods' TOO_MANY_ENTRIES reaches both endpoints in the default run through
# test_extraction_limits_come_from_the_settings (a small limit, not 100 000 entries).
FLOODS = {"tgz-100k-entries", "zip-100k-entries"}


def _representative(corpus: list[Hostile]) -> set[str]:
    """The first case of each (code, file name) in `corpus`, floods left out."""
    first: dict[tuple[str, str], str] = {}
    for case in corpus:
        if case.id not in FLOODS:
            first.setdefault((case.code, case.filename), case.id)
    return set(first.values())


REPRESENTATIVE = _representative(CORPUS)
CORPUS_CASES = [
    pytest.param(case, id=case.id, marks=() if case.id in REPRESENTATIVE else pytest.mark.slow)
    for case in CORPUS
]


def test_corpus_is_big_and_ids_are_unique() -> None:
    assert len(CORPUS) >= 25
    assert len({case.id for case in CORPUS}) == len(CORPUS)


def test_the_default_run_replays_every_refusal_code_of_the_corpus() -> None:
    codes = {case.code for case in CORPUS if case.id in REPRESENTATIVE}
    assert codes | {"TOO_MANY_ENTRIES"} == {case.code for case in CORPUS}


@pytest.mark.parametrize("case", CORPUS_CASES)
async def test_plugin_upload_refuses_hostile_archive(
    victim, tmp_path: Path, heavy_archives: dict[str, bytes], case: Hostile
) -> None:
    await refuse_hostile(victim, "plugin", case, tmp_path, heavy_archives)


@pytest.mark.parametrize("case", CORPUS_CASES)
async def test_app_upload_refuses_hostile_archive(
    victim, tmp_path: Path, heavy_archives: dict[str, bytes], case: Hostile
) -> None:
    await refuse_hostile(victim, "app", case, tmp_path, heavy_archives)


@BOTH
@pytest.mark.parametrize("filename", [T, Z])
async def test_corpus_base_installs(
    victim, tmp_path: Path, plugin_dir: Path, endpoint: str, filename: str
) -> None:
    """Without its trick a corpus archive installs: the tricks are what is refused."""
    answer = await upload(victim.client, endpoint, filename, tgz() if filename == T else zipped())
    assert answer.status_code == 200, answer.text
    installed = plugin_dir / "evil" if endpoint == "plugin" else tmp_path / "apps/evil/1.0.0"
    assert files_of(installed) == BASE


@BOTH
async def test_setuid_and_other_mode_bits_are_dropped_not_refused(
    courtyard, tmp_path: Path, plugin_dir: Path, endpoint: str
) -> None:
    rt = await courtyard(entry_points=False)
    files = {**plugin_files("modes"), **app_files("modes", "1.0.0")}
    members = [
        *(tar_file(name, data) for name, data in files.items()),
        tar_dir("bin", mode=0o1777),
        tar_file("bin/setuid", b"#!/bin/sh\n", mode=0o4755),
        tar_file("bin/setgid", b"#!/bin/sh\n", mode=0o2711),
        tar_file("bin/owner-only", b"#!/bin/sh\n", mode=0o700),
        tar_file("data.txt", b"d", mode=0o6666),
        tar_file("secret.txt", b"s", mode=0o600),
    ]
    answer = await upload(rt.client, endpoint, "modes.tgz", tgz_bytes(members))
    assert answer.status_code == 200, answer.text
    root = Path(answer.json()["data"][endpoint]["installedAt"])
    assert root == (plugin_dir / "modes" if endpoint == "plugin" else tmp_path / "apps/modes/1.0.0")
    assert {path: mode_of(root / path) for path in ("bin", "bin/setuid", "bin/setgid")} == {
        "bin": 0o755,
        "bin/setuid": 0o755,
        "bin/setgid": 0o755,
    }
    assert mode_of(root / "bin/owner-only") == 0o755
    assert mode_of(root / "data.txt") == 0o644
    assert mode_of(root / "secret.txt") == 0o644
    assert mode_of(root) == 0o755

    zipped_modes = zip_bytes(
        [*files.items(), (zip_entry("run", stat.S_IFREG | 0o6755), b"#!/bin/sh\n")]
    )
    answer = await upload(rt.client, endpoint, "modes.zip", zipped_modes, {"overwrite": "true"})
    assert answer.status_code == 200, answer.text
    assert mode_of(root / "run") == 0o755


# -- concurrency -----------------------------------------------------------------------


async def test_concurrent_plugin_uploads_end_in_one_complete_version(
    courtyard, plugin_dir: Path, side_by_side: list[int]
) -> None:
    rt = await courtyard(entry_points=False)
    versions = {v: racer("race", v) for v in ("1.0.0", "2.0.0")}
    archives = [pack(files, f"race-{v}.tgz") for v, files in versions.items()]
    for round_ in range(1, 5):
        answers = await asyncio.gather(
            *(upload(rt.client, "plugin", "race.tgz", data) for data in archives)
        )
        assert len(side_by_side) == 2 * round_  # both extracted at once, then raced
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        installed = files_of(plugin_dir / "race")
        assert installed in list(versions.values())  # one whole version, never a mix
        winner = next(v for v, files in versions.items() if files == installed)
        assert (await rt.client.get("/race/")).json() == {"message": winner}
        listed = (await rt.client.get("/api/plugins/")).json()
        assert [(p["name"], p["version"]) for p in listed] == [("race", winner)]
        assert sorted(p.name for p in plugin_dir.iterdir()) == ["race"]  # no staging, backup


@pytest.mark.parametrize("overwrite", [False, True])
async def test_concurrent_uploads_of_one_app_version(
    courtyard, tmp_path: Path, side_by_side: list[int], overwrite: bool
) -> None:
    rt = await courtyard(entry_points=False)
    apps = tmp_path / "apps"
    contents = [racer("race", "1.0.0"), {**racer("race", "1.0.0"), "second.txt": b"2"}]
    archives = [pack(files, "race.zip") for files in contents]
    params = {"overwrite": "true"} if overwrite else None
    answers = await asyncio.gather(
        *(upload(rt.client, "app", "race.zip", data, params) for data in archives)
    )
    assert len(side_by_side) == 2
    codes = sorted(a.status_code for a in answers)
    assert codes == ([200, 200] if overwrite else [200, 409]), [a.text for a in answers]
    installed = files_of(apps / "race" / "1.0.0")
    assert installed in contents
    if not overwrite:
        winner = next(i for i, a in enumerate(answers) if a.status_code == 200)
        assert installed == contents[winner]
    assert sorted(p.name for p in apps.iterdir()) == ["race"]
    assert sorted(p.name for p in (apps / "race").iterdir()) == ["1.0.0"]
    assert (await rt.client.get("/race@1.0.0/")).text == "1.0.0"


# -- bugs found by this corpus, fixed ---------------------------------------------------


@BOTH
async def test_refused_upload_into_a_missing_directory_leaves_no_trace(
    courtyard, tmp_path: Path, endpoint: str
) -> None:
    rt = await courtyard(entry_points=False, plugin_dirs=[tmp_path / "plugins-later"])
    assert not (tmp_path / "plugins-later").exists()
    assert not (tmp_path / "apps").exists()
    before = tree_state(tmp_path)
    answer = await upload(rt.client, endpoint, T, tgz(tar_file("../evil.txt")))
    assert_error(answer, 400, "PATH_TRAVERSAL")
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("version", ["1.0.0\n", "1.0.0\t", " 1.0.0", "1.0.0\r\n"])
async def test_app_version_with_whitespace_makes_no_odd_folder(
    courtyard, tmp_path: Path, version: str
) -> None:
    rt = await courtyard(entry_points=False)
    files = app_files("spaced", version)
    answer = await upload(rt.client, "app", "s.zip", pack(files, "s.zip"))
    if answer.status_code == 200:  # a fix may clean the version up ...
        assert answer.json()["data"]["app"]["version"] == "1.0.0"
    else:  # ... or refuse it
        assert_error(answer, 400, "INVALID_MANIFEST")
    folders = [p.name for p in (tmp_path / "apps").glob("spaced/*")]
    assert all(name == name.strip() and name.isprintable() for name in folders), folders


@pytest.mark.parametrize("spelling", ["1.0", "v1.0.0", "1.0.0.0", "01.0.0"])
async def test_an_equal_version_spelt_differently_is_not_a_new_version(
    courtyard, tmp_path: Path, spelling: str
) -> None:
    rt = await courtyard(entry_points=False)
    first = app_files("same", "1.0.0", page="first")
    assert (await upload(rt.client, "app", "a.zip", pack(first, "a.zip"))).is_success
    before = tree_state(tmp_path)

    again = app_files("same", spelling, page="second")
    answer = await upload(rt.client, "app", "a.zip", pack(again, "a.zip"))
    assert (await rt.client.get("/same@1.0.0/")).text == "first"
    assert answer.status_code in (400, 409), answer.text
    assert answer.json()["error"]["code"] in ("VERSION_EXISTS", "INVALID_MANIFEST")
    assert tree_state(tmp_path) == before
    assert (await rt.client.get("/api/apps/")).json()[0]["versions"] == ["1.0.0"]


async def test_crash_leftovers_of_an_app_upload_are_settled_at_start_up(
    courtyard, tmp_path: Path
) -> None:
    """What a crash between the two renames of an overwrite leaves (see installs.py)."""
    apps = tmp_path / "apps"
    backup = apps / "crashed" / f".courtyard-old-{'a' * 32}-1.0.0"
    backup.mkdir(parents=True)
    for name, data in app_files("crashed", "1.0.0", page="survived").items():
        (backup / name).write_bytes(data)
    staging = apps / f".courtyard-staging-{'b' * 32}"
    staging.mkdir()
    (staging / "upload").write_bytes(b"half an upload")

    rt = await courtyard(entry_points=False)
    assert not staging.exists()
    assert (await rt.client.get("/api/apps/")).json()[0]["versions"] == ["1.0.0"]
    assert (await rt.client.get("/crashed@1.0.0/")).text == "survived"
    assert hidden_entries(apps, apps / "crashed") == []
