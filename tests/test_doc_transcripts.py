"""The README's tour and the plugin tutorials run as written, and show what they print.

Their shell sessions are transcripts in prysk's format (a fork of Cram, the snapshot
tester Mercurial's docs grew from): inside the page's ```console blocks, a line indented by
two spaces and starting with `$ ` is a command, `> ` continues it, and the indented lines
after it are its output; everything else on the page is prose that prysk skips. prysk runs
the commands of a page in order in one shell, in a fresh folder, and diffs the output
against the page. An output line ending in `(glob)` or `(re)` is a pattern for what
changes from run to run (ids, times, temporary paths).

What a reader has and the test must stand in for:
- the port: the pages use 8000; each run takes a free port (`COURTYARD_PORT`, and the
  page's `127.0.0.1:8000` becomes that port, and back in the diff);
- the checkout: the README runs from the repository root, so `uv run` is pointed at the
  checkout from the fresh folder (a `uv` shim), and the example `apps/` are copied in; the
  tutorials name the checkout `$CHECKOUT`, which the reader sets;
- the package index: `uv sync` in a generated project runs offline, from uv's cache,
  which the checkout's own `uv sync` filled (no test reaches beyond loopback).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import uuid
from pathlib import Path

import pytest
from prysk.test import test as run_transcript

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DOCS = ROOT / "docs" / "plugins"
PAGE_PORT = b"127.0.0.1:8000"
COMMAND_LINES = (b"  $ ", b"  > ")  # prysk's commands, and the lines that continue them
RUN_MARKER = "COURTYARD_DOCS_RUN"
# Set by this run of the tests, unknown to a reader's shell.
OUR_VARIABLES = ("COURTYARD_", "PYTEST_", "VIRTUAL_ENV")
# Set by CI, where pytest stops shortening its summary lines to the terminal's width.
CI_VARIABLES = ("CI", "BUILD_NUMBER")
PAGE_TIMEOUT = 300  # seconds: a page that hangs (a server that never starts) fails

pytestmark = pytest.mark.slow  # each page starts servers and runs uv: CI's slow step


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uv_shim(folder: Path) -> Path:
    """A `uv` that runs `uv run ...` in the checkout's project from any folder, as
    `uv run` does from the repository root."""
    real = shutil.which("uv")
    assert real, "uv is needed to run the docs"
    folder.mkdir()
    shim = folder / "uv"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = run ]; then shift; exec {real} run --project {ROOT} --no-sync "$@"; fi\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return folder


def run_page(page: Path, workdir: Path, env: dict[str, str], port: int) -> None:
    """Run `page` as a transcript in `workdir`, its servers on `port` instead of 8000;
    fail with the diff if any output differs."""
    marker = uuid.uuid4().hex
    local = f"127.0.0.1:{port}".encode()
    lines = [
        line.replace(PAGE_PORT, local) if line.startswith(COMMAND_LINES) else line
        for line in transcript(page.read_bytes())
    ]
    shell_env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(OUR_VARIABLES) and k not in CI_VARIABLES
        },
        **env,
        "COURTYARD_PORT": str(port),  # instead of the default, 8000
        # Temporary folders (`mktemp -d`) inside the run's folder.
        "TMPDIR": str(workdir),
        "UV_OFFLINE": "1",
        "UV_NO_PROGRESS": "1",
        "NO_COLOR": "1",
        # pytest and the CLI wrap to the terminal's width: the pages show 80 columns.
        "COLUMNS": "80",
        "LINES": "24",
        RUN_MARKER: marker,
    }
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        _, actual, diff = run_transcript(
            lines,
            shell=["timeout", "-k", "10", str(PAGE_TIMEOUT), "/bin/bash"],
            testname=page.relative_to(ROOT),
            env=shell_env,
        )
        differences = b"".join(line.replace(local, PAGE_PORT) for line in diff or [])
    finally:
        os.chdir(previous)
        stop_leftovers(f"{RUN_MARKER}={marker}")
    if differences:
        # What the page would say, for a developer to compare or copy (prysk's `.err`).
        ran = workdir / f"{page.name}.err"
        ran.write_bytes(b"".join(line.replace(local, PAGE_PORT) for line in actual))
        pytest.fail(
            f"the page and its run differ (the run: {ran}):\n"
            + differences.decode(errors="replace")
        )


def transcript(page: bytes) -> list[bytes]:
    """The page's lines as prysk reads them: the ```console blocks as written, and every
    other line unindented, so that prysk takes it for prose (an indented line of a list
    or of another code block would otherwise read as expected output)."""
    lines, in_console = [], False
    for line in page.splitlines(True):
        fence = line.strip()
        if fence.startswith(b"```"):
            in_console = not in_console and fence == b"```console"
        lines.append(line if in_console else line.lstrip(b" \t") or b"\n")
    return lines


def stop_leftovers(marker: str) -> None:
    """Kill what a failed run left running (a page stops its own servers when it passes):
    every process whose environment holds this run's marker."""
    needle = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def test_the_readme_tour(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "apps", tmp_path / "apps")
    bin_dir = uv_shim(tmp_path / "bin")
    port = free_port()
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "COURTYARD_URL": f"http://127.0.0.1:{port}",  # the CLI's default server is on 8000
    }
    run_page(ROOT / "README.md", tmp_path, env, port)


def test_the_plugin_tutorial(tmp_path: Path) -> None:
    run_page(PLUGIN_DOCS / "tutorial.md", tmp_path, {"CHECKOUT": str(ROOT)}, free_port())


def test_the_data_tutorial(tmp_path: Path) -> None:
    run_page(PLUGIN_DOCS / "tutorial-data.md", tmp_path, {"CHECKOUT": str(ROOT)}, free_port())
