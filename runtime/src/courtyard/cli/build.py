"""`courtyard plugins build`: a plugin project built into a wheel, checked as the runtime
will find it once installed.

The project is an ordinary Python distribution (`courtyard new plugin` makes one), so the
wheel comes from its own build backend, through uv (`uv build`) or, without uv, pip
(`pip wheel`). What the build tools do not know is checked after: the wheel must declare a
`courtyard.plugins` entry point, and the package that entry point names must carry its
`plugin.toml` with the same version as the wheel; that manifest is read as the server
reads it. A wheel that passes installs next to the runtime (`pip install courtyard-hello`)
and is found through its entry point.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click

from ..discovery import ENTRY_POINT_GROUP
from .errors import CommandError, reported
from .options import json_option
from .output import print_json
from .pack import read_folder_manifest


@dataclass(frozen=True)
class Built:
    """A checked wheel: the plugin it installs and where it is."""

    path: Path
    name: str
    version: str
    entry_point: str


def build_command() -> list[str]:
    """The build frontend's command line, up to the output folder option."""
    uv = shutil.which("uv")
    if uv:
        return [uv, "build", "--wheel", "--out-dir"]
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir"]


def build_wheel(project: Path, out_dir: Path) -> Path:
    """Build `project`'s wheel into `out_dir` and return its path.

    :raises CommandError: NOT_A_PROJECT, BUILD_FAILED.
    """
    if not (project / "pyproject.toml").is_file():
        raise CommandError(
            "NOT_A_PROJECT",
            f"{project}: no pyproject.toml (build the plugin's project folder, such as the "
            "one `courtyard new plugin` makes; `courtyard plugins pack` packs a plugin folder)",
        )
    with tempfile.TemporaryDirectory(prefix="courtyard-build-") as scratch:
        done = subprocess.run(
            [*build_command(), scratch, str(project)],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            said = (done.stderr or done.stdout).strip().splitlines()[-12:]
            raise CommandError("BUILD_FAILED", "\n".join(said) or "no wheel was built")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(wheels[0], out_dir / wheels[0].name))


def check_wheel(wheel: Path) -> Built:
    """What `wheel` installs, checked as the runtime will load it.

    :raises CommandError: NOT_A_PLUGIN (no `courtyard.plugins` entry point, or its
        package lacks `plugin.toml`), INVALID_MANIFEST, VERSION_MISMATCH.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        tops = {n.split("/")[0] for n in names}
        dist_info = next((top for top in sorted(tops) if top.endswith(".dist-info")), None)
        if dist_info is None:
            raise CommandError("NOT_A_PLUGIN", f"{wheel.name} has no .dist-info: not a wheel")
        wheel_version = dist_info.removesuffix(".dist-info").rsplit("-", 1)[1]
        points = configparser.ConfigParser(delimiters=("=",))
        points.optionxform = str  # type: ignore[assignment,method-assign]  # names keep their case
        entry_file = f"{dist_info}/entry_points.txt"
        if entry_file in names:
            points.read_string(archive.read(entry_file).decode())
        if not points.has_section(ENTRY_POINT_GROUP) or not points.items(ENTRY_POINT_GROUP):
            raise CommandError(
                "NOT_A_PLUGIN",
                f'{wheel.name} declares no [project.entry-points."{ENTRY_POINT_GROUP}"]: the '
                'runtime would not find it (add `name = "package.plugin"` to pyproject.toml)',
            )
        entry_name, target = points.items(ENTRY_POINT_GROUP)[0]
        package = target.split(":", 1)[0].strip().split(".", 1)[0]
        manifest = f"{package}/plugin.toml"
        if manifest not in names:
            raise CommandError(
                "NOT_A_PLUGIN",
                f"{wheel.name} has no {manifest}: the package the entry point names must hold "
                "the plugin's manifest (include it in the wheel's package data)",
            )
        with tempfile.TemporaryDirectory(prefix="courtyard-build-") as scratch:
            (Path(scratch) / "plugin.toml").write_bytes(archive.read(manifest))
            name, version = read_folder_manifest(Path(scratch), "plugin")
    if version != wheel_version:
        raise CommandError(
            "VERSION_MISMATCH",
            f"{wheel.name} is version {wheel_version} but its plugin.toml says {version}: "
            "take the distribution's version from plugin.toml ([tool.hatch.version])",
        )
    return Built(wheel, name, version, f"{entry_name} = {target.strip()}")


@click.command("build")
@click.argument(
    "project",
    required=False,
    default=".",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the wheel goes [default: PROJECT/dist].",
)
@json_option
@reported
def build(project: Path, out_dir: Path | None, as_json: bool) -> None:
    """Build the plugin project PROJECT (default: here) into a wheel, and check it.

    The wheel installs next to the runtime (`pip install`, or an upload to a package
    index first) and is found through its `courtyard.plugins` entry point.
    """
    built = check_wheel(build_wheel(project, out_dir or project / "dist"))
    if as_json:
        print_json(
            {
                "name": built.name,
                "version": built.version,
                "entryPoint": built.entry_point,
                "path": str(built.path),
            }
        )
        return
    click.echo(
        f"built plugin {built.name} {built.version} (entry point {built.entry_point})"
        f" -> {built.path}"
    )
