"""`courtyard plugins build`: a plugin project becomes a wheel that, installed next to the
runtime, is found through its entry point; wheels the runtime would not find are refused
with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.cli.build import check_wheel
from courtyard.cli.errors import CommandError

MANIFEST = 'name = "hello"\nversion = "1.2.0"\nmodule = "plugin"\n'


def wheel(
    folder: Path,
    *,
    version: str = "1.2.0",
    entry_points: str | None = "[courtyard.plugins]\nhello = courtyard_hello.plugin\n",
    manifest: str | None = MANIFEST,
) -> Path:
    """A wheel as a build backend writes one, with the parts `check_wheel` reads."""
    path = folder / f"courtyard_hello-{version}-py3-none-any.whl"
    info = f"courtyard_hello-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("courtyard_hello/__init__.py", "")
        archive.writestr("courtyard_hello/plugin.py", "")
        if manifest is not None:
            archive.writestr("courtyard_hello/plugin.toml", manifest)
        archive.writestr(f"{info}/METADATA", f"Name: courtyard-hello\nVersion: {version}\n")
        if entry_points is not None:
            archive.writestr(f"{info}/entry_points.txt", entry_points)
    return path


def test_a_plugin_wheel_is_described(tmp_path: Path) -> None:
    built = check_wheel(wheel(tmp_path))

    assert (built.name, built.version) == ("hello", "1.2.0")
    assert built.entry_point == "hello = courtyard_hello.plugin"


@pytest.mark.parametrize(
    ("kwargs", "code", "said"),
    [
        ({"entry_points": None}, "NOT_A_PLUGIN", 'entry-points."courtyard.plugins"'),
        ({"entry_points": "[console_scripts]\nhi = x:y\n"}, "NOT_A_PLUGIN", "declares no"),
        ({"manifest": None}, "NOT_A_PLUGIN", "courtyard_hello/plugin.toml"),
        ({"manifest": 'name = "Hello!"\nversion = "1"\n'}, "INVALID_MANIFEST", "name"),
        ({"version": "1.3.0"}, "VERSION_MISMATCH", "plugin.toml says 1.2.0"),
    ],
)
def test_a_wheel_the_runtime_would_not_find_is_refused(
    tmp_path: Path, kwargs: dict[str, str | None], code: str, said: str
) -> None:
    with pytest.raises(CommandError) as refused:
        check_wheel(wheel(tmp_path, **kwargs))  # type: ignore[arg-type]

    assert refused.value.code == code
    assert said in refused.value.message


def test_an_archive_without_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "courtyard_hello-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("courtyard_hello/plugin.toml", MANIFEST)

    with pytest.raises(CommandError) as refused:
        check_wheel(path)

    assert refused.value.code == "NOT_A_PLUGIN" and "no .dist-info" in refused.value.message


def test_a_folder_without_a_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text(MANIFEST)

    result = CliRunner().invoke(main, ["plugins", "build", str(tmp_path)])

    assert result.exit_code == 1
    assert "error: NOT_A_PROJECT:" in result.output
    assert "courtyard plugins pack" in result.output


@pytest.mark.slow  # a real build (uv and the project's build backend) and an install
def test_the_scaffold_builds_into_a_wheel_the_runtime_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UV_OFFLINE", "1")  # the build backend from uv's cache: loopback only
    assert CliRunner().invoke(main, ["new", "plugin", "hello"]).exit_code == 0

    built = CliRunner().invoke(main, ["plugins", "build", "hello", "--json"])

    assert built.exit_code == 0, built.output
    described = json.loads(built.stdout)
    assert described["name"] == "hello" and described["version"] == "0.1.0"
    assert described["entryPoint"] == "hello = courtyard_hello.plugin"
    site = tmp_path / "site"  # installed as pip installs a pure-Python wheel: unpacked
    with zipfile.ZipFile(described["path"]) as archive:
        archive.extractall(site)
    no_plugin_dir = str(tmp_path / "none")
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "courtyard",
            "plugins",
            "list",
            "--json",
            "--plugin-dir",
            no_plugin_dir,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=False,
    )
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["hello"]["source"] == "entry point"
    assert rows["hello"]["status"] == "loaded"
    assert Path(rows["hello"]["path"]).is_relative_to(site)
