"""`courtyard new plugin` and `courtyard new app`: the generated projects work as generated.

The plugin's and the ASGI app's own generated tests run in a subprocess, as their authors
would run them; the plugin is made visible as an installed distribution the way an
editable install does it (its `src/` on the path, a dist-info with its entry points).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from courtyard.apps.registry import read_app_manifest
from courtyard.cli import new as scaffold
from courtyard.cli.new import APP_FILES, DB_FILES, PLUGIN_FILES, TEMPLATES, new
from courtyard_sdk import read_manifest


def invoke(*args: str) -> Result:
    """Run `courtyard new ...` as the CLI will have it, through a group of its own."""

    @click.group()
    def cli() -> None:
        pass

    cli.add_command(new)
    return CliRunner().invoke(cli, ["new", *args])


def run_pytest(project: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    """Run the project's tests with this interpreter, from the project's folder."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def install_like_editable(project: Path, site: Path) -> None:
    """What `pip install -e .` leaves for the plugin: a dist-info with the project's entry
    points in `site` (the caller puts `site` and `src/` on the path)."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    package = meta["name"].replace("-", "_")
    info = site / f"{package}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: 0.1.0\n", encoding="utf-8"
    )
    lines = ["[courtyard.plugins]"]
    lines += [f"{k} = {v}" for k, v in meta["entry-points"]["courtyard.plugins"].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- plugins ---------------------------------------------------------------------------


@pytest.mark.slow  # the generated project's own test suite, in a subprocess: CI's slow step
def test_the_plugin_project_passes_its_own_tests(tmp_path: Path) -> None:
    project = tmp_path / "hello.world"
    answer = invoke("plugin", "@acme/hello.world", "--dir", str(project))
    assert answer.exit_code == 0, answer.output
    install_like_editable(project, tmp_path / "site")

    done = run_pytest(project, [tmp_path / "site", project / "src"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 passed" in done.stdout  # 5 tests, as an entry point and as a directory


@pytest.mark.slow  # the generated project's own test suite, in a subprocess: CI's slow step
def test_the_plugin_project_with_a_table_passes_its_own_tests(tmp_path: Path) -> None:
    """--with-db: a model, its first migration drafted from it, routes and tests."""
    project = tmp_path / "notes"
    answer = invoke("plugin", "notes", "--with-db", "--dir", str(project))
    assert answer.exit_code == 0, answer.output
    package = project / "src" / "courtyard_notes"
    (migration,) = (package / "migrations").glob("*_create_the_notes_tables.py")
    assert "op.create_table('notes_note'" in migration.read_text()
    assert read_manifest(package).migrations == "migrations"
    install_like_editable(project, tmp_path / "site")

    done = run_pytest(project, [tmp_path / "site", project / "src"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 passed" in done.stdout  # the 10 of a plain plugin, and the notes' 2


def test_the_plugin_project_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    answer = invoke("plugin", "@acme/hello.world")  # into ./hello.world by default

    assert answer.exit_code == 0, answer.output
    project = tmp_path / "hello.world"
    package = project / "src" / "courtyard_acme_hello_world"
    files = (p for p in project.rglob("*") if p.is_file())
    assert sorted(p.relative_to(project).as_posix() for p in files) == [
        ".github/workflows/test.yml",
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "src/courtyard_acme_hello_world/__init__.py",
        "src/courtyard_acme_hello_world/plugin.py",
        "src/courtyard_acme_hello_world/plugin.toml",
        "tests/test_plugin.py",
    ]
    manifest = read_manifest(package)
    assert (manifest.name, manifest.version, manifest.module) == (
        "@acme/hello.world",
        "0.1.0",
        "plugin",
    )
    assert manifest.base == "/hello-world"
    assert [m.to_json() for m in manifest.menus] == [
        {"title": "Hello World", "icon": "lucide:puzzle", "path": "/hello-world"}
    ]
    assert manifest.validate_settings({}) == {"greeting": "Hello"}

    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "courtyard-acme-hello-world"
    assert pyproject["project"]["dependencies"] == ["courtyard-sdk"]
    assert pyproject["dependency-groups"]["dev"] == ["courtyard[testing]"]
    assert pyproject["project"]["entry-points"]["courtyard.plugins"] == {
        "acme-hello-world": "courtyard_acme_hello_world.plugin"
    }
    assert pyproject["tool"]["hatch"]["version"]["path"] == (
        "src/courtyard_acme_hello_world/plugin.toml"
    )
    assert pyproject["tool"]["pytest"]["ini_options"]["asyncio_mode"] == "auto"
    assert "Created hello.world" in answer.output

    # CI runs the tests as the project's README says: uv sync, then uv run pytest.
    workflow = yaml.safe_load((project / ".github/workflows/test.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    assert [step.get("run", "").split(" --")[0] for step in steps if "run" in step] == [
        "uv sync",
        "uv run pytest",
    ]
    assert "${{ matrix.python }}" in steps[2]["run"]


async def test_the_plugin_folder_is_a_directory_plugin(courtyard, plugin_dir, tmp_path) -> None:
    assert invoke("plugin", "greeter", "--dir", str(tmp_path / "greeter")).exit_code == 0
    shutil.copytree(tmp_path / "greeter" / "src" / "courtyard_greeter", plugin_dir / "greeter")

    rt = await courtyard(entry_points=False, plugins={"greeter": {"greeting": "Hey"}})

    assert (await rt.client.get("/greeter/ada")).json() == {"message": "Hey, ada"}


def test_local_sources_point_uv_at_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    checkouts = {"courtyard-sdk": Path("/src/cy/sdk"), "courtyard": Path("/src/cy/runtime")}
    monkeypatch.setattr(scaffold, "_local_checkout", lambda dist: (checkouts[dist], True))

    sources = tomllib.loads(scaffold.local_sources())["tool"]["uv"]["sources"]

    assert sources == {
        "courtyard-sdk": {"path": "/src/cy/sdk", "editable": True},
        "courtyard": {"path": "/src/cy/runtime", "editable": True},
    }
    monkeypatch.setattr(scaffold, "_local_checkout", lambda dist: None)
    assert scaffold.local_sources() == ""


# -- apps ------------------------------------------------------------------------------


async def test_the_static_app_is_served_by_the_runtime(courtyard, tmp_path) -> None:
    project = tmp_path / "site"
    assert invoke("app", "site", "--kind", "static", "--dir", str(project)).exit_code == 0
    assert read_app_manifest(project)[:2] == ("site", "0.1.0")
    shutil.copytree(project, tmp_path / "apps" / "site" / "0.1.0")  # the fixture's app dir

    rt = await courtyard(entry_points=False)

    page = await rt.client.get("/site/")
    assert page.status_code == 200
    assert "<title>site</title>" in page.text
    css = await rt.client.get("/site@0.1.0/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_the_asgi_app_passes_its_own_tests(tmp_path: Path) -> None:
    project = tmp_path / "api"
    answer = invoke("app", "@acme/api", "--kind", "asgi", "--dir", str(project))
    assert answer.exit_code == 0, answer.output
    name, version, config = read_app_manifest(project)
    assert (name, version, config.entry) == ("@acme/api", "0.1.0", "app:app")

    done = run_pytest(project, [])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


async def test_the_asgi_app_is_served_by_the_runtime(courtyard, tmp_path) -> None:
    project = tmp_path / "api"
    assert invoke("app", "@acme/api", "--kind", "asgi", "--dir", str(project)).exit_code == 0
    shutil.copytree(project, tmp_path / "apps" / "@acme" / "api" / "0.1.0")

    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/@acme/api/", timeout=30)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "message": "Hello from @acme/api",
        "root_path": "/@acme/api",
        "path": "/",
    }


def test_the_app_kinds_write_their_files(tmp_path: Path) -> None:
    for kind, files in APP_FILES.items():
        assert invoke("app", "x", "--kind", kind, "--dir", str(tmp_path / kind)).exit_code == 0
        written = {p.relative_to(tmp_path / kind).as_posix() for p in (tmp_path / kind).rglob("*")}
        assert set(files) <= written
    package = json.loads((tmp_path / "static" / "package.json").read_text())
    assert (package["name"], package["version"]) == ("x", "0.1.0")


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plugin", "app"])
def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    extra = ["--kind", "static"] if kind == "app" else []

    answer = invoke(kind, "taken", "--dir", str(target), *extra)

    assert answer.exit_code == 1
    assert f"{target} already exists and is not empty" in answer.output
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_an_empty_folder_is_used_and_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")

    assert invoke("plugin", "ok", "--dir", str(tmp_path / "empty")).exit_code == 0
    assert (tmp_path / "empty" / "pyproject.toml").is_file()
    answer = invoke("app", "ok", "--kind", "static", "--dir", str(tmp_path / "file"))
    assert answer.exit_code == 2
    assert "Invalid value for '--dir'" in answer.output
    assert "is a file" in answer.output
    with pytest.raises(scaffold.ScaffoldError, match="already exists and is a file"):
        scaffold.create_app("ok", "static", tmp_path / "file")


@pytest.mark.parametrize("name", ["Hello", "@acme", "../up", "a/b", "_x", "@acme/", ""])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    for args in (["plugin", name], ["app", name, "--kind", "asgi"]):
        answer = invoke(*args, "--dir", str(tmp_path / "out"))

        assert answer.exit_code == 2
        assert "Invalid value for 'NAME'" in answer.output
    assert not (tmp_path / "out").exists()


def test_names_the_runtime_would_refuse_are_refused(tmp_path: Path) -> None:
    api = invoke("plugin", "api", "--dir", str(tmp_path / "api"))
    sdk = invoke("plugin", "sdk", "--dir", str(tmp_path / "sdk"))
    kindless = invoke("app", "site", "--dir", str(tmp_path / "site"))

    assert api.exit_code == 1
    assert "/api is reserved by the runtime" in api.output
    assert sdk.exit_code == 1
    assert "'courtyard-sdk', which is Courtyard's own" in sdk.output
    assert kindless.exit_code == 2
    assert "Missing option '--kind'" in kindless.output
    assert not any(tmp_path.iterdir())


def test_every_template_is_used_and_inside_the_package() -> None:
    apps = (t for files in APP_FILES.values() for t in files.values())
    used = {*PLUGIN_FILES.values(), *DB_FILES.values(), *apps}
    found = {p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.tmpl")}

    assert used == found
    assert TEMPLATES.parent == Path(scaffold.__file__).parent  # shipped in the wheel with it
