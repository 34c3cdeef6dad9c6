"""The docs cannot drift from the code (as Datasette's tests/test_docs.py keeps its own).

Each test reads README.md and docs/ and checks one kind of statement against the code it
describes: the settings table against `Settings`, the hooks against `hookspecs`, the
reserved paths against `courtyard_sdk.paths`, the commands against the click group, the
SDK reference against `courtyard_sdk.__all__`; links must lead somewhere, examples must
run, and no page may show one machine's paths or cite internal documents.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import os
import re
from pathlib import Path

import click
import courtyard_sdk
import pytest
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.settings import ENV_FIELDS, Settings, env_name
from courtyard_sdk import hookspecs
from courtyard_sdk.paths import RESERVED_PREFIXES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLUGIN_DOCS = DOCS / "plugins"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("courtyard_"))

_FENCE = re.compile(r"^(```|~~~)")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text(path).splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole heading line), up to the next heading of its
    level or above."""
    lines = text(path).splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    body, fenced = [], False
    for line in lines[start + 1 :]:
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return "\n".join(body)


# Settings ------------------------------------------------------------------------------


def settings_rows() -> dict[str, list[str]]:
    """The rows of docs/configuration.md's settings table, by setting."""
    rows = {}
    for line in section(DOCS / "configuration.md", "## Settings").splitlines():
        if match := re.match(r"\| `(\w+)` \|", line):
            rows[match[1]] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_the_settings_table_has_rows():
    assert len(settings_rows()) >= 30


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_has_a_row(field):
    rows = settings_rows()
    assert field in rows, f"docs/configuration.md's settings table has no row for {field}"
    env_cell = rows[field][-1]
    if field in ENV_FIELDS:
        assert f"`{env_name(field)}`" in env_cell, (
            f"{field}'s row does not name its environment variable {env_name(field)}"
        )
    else:
        assert "file only" in env_cell, f"{field} has no environment variable: say 'file only'"


def test_every_row_names_a_setting():
    unknown = settings_rows().keys() - Settings.model_fields.keys()
    assert not unknown, f"docs/configuration.md documents settings that do not exist: {unknown}"


# Hooks ---------------------------------------------------------------------------------


def parameters(hook: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, hook)).parameters)


def documented_hook_signatures() -> dict[str, list[tuple[str, list[str]]]]:
    """Each hook the plugin docs document, with the parameter names each place gives it:
    the headings of writing-a-plugin.md's hooks section (`courtyard_x(ctx, request) ->
    ...`) and the rows of sdk-reference.md's table of hooks."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    hooks = section(PLUGIN_DOCS / "writing-a-plugin.md", "## Hooks")
    for match in re.finditer(r"^### `(courtyard_\w+)\(([^)]*)\)", hooks, re.M):
        names = [p.strip() for p in match[2].split(",") if p.strip()]
        found.setdefault(match[1], []).append(("writing-a-plugin.md", names))
    table = section(PLUGIN_DOCS / "sdk-reference.md", "### `hookspecs`")
    for match in re.finditer(r"^\| [\w ]+ \| `(courtyard_\w+)` \| ([^|]*) \|", table, re.M):
        names = re.findall(r"`(\w+)`", match[2])
        found.setdefault(match[1], []).append(("sdk-reference.md", names))
    return found


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    places = documented_hook_signatures().get(hook, [])
    missing = {"writing-a-plugin.md", "sdk-reference.md"} - {page for page, _ in places}
    assert not missing, f"{hook} is missing from the hooks documented in docs/plugins/{missing}"
    for page, names in places:
        assert names == parameters(hook), (
            f"docs/plugins/{page} gives {hook} the parameters {names}, "
            f"hookspecs.py {parameters(hook)}"
        )


def test_no_documented_hook_is_missing_from_the_hookspecs():
    documented = set(documented_hook_signatures())
    mentioned = {
        name
        for page in PLUGIN_DOCS.glob("*.md")
        for name in re.findall(r"`(courtyard_[a-z_]+)\b", text(page))
    }
    # `courtyard_server` is a fixture of courtyard.testing; `courtyard_sdk` and
    # `courtyard_hello` are packages; `courtyard_some_new_hook` is compatibility.md's
    # example of a hook a newer SDK may add.
    not_hooks = {"courtyard_server", "courtyard_sdk", "courtyard_hello", "courtyard_some_new_hook"}
    unknown = (documented | mentioned) - set(HOOKS) - not_hooks
    assert not unknown, f"the plugin docs document hooks hookspecs.py does not have: {unknown}"


# Reserved paths ------------------------------------------------------------------------

# A run of three or more backticked paths: `/a`, `/b` and `/c`.
_PATH_LIST = re.compile(r"`/[^`\s]*`(?:(?:,\s+(?:and\s+)?|\s+and\s+)`/[^`\s]*`){2,}")


def reserved_path_lists() -> list[tuple[str, list[str]]]:
    """Every list of paths in README.md and docs/ that names `/api/health` (the lists of
    reserved paths), with the page it is on."""
    found = []
    for page in PAGES:
        prose = "\n".join(line for _, line in prose_lines(page))
        for match in _PATH_LIST.finditer(prose):
            paths = re.findall(r"`(/[^`\s]*)`", match[0])
            if "/api/health" in paths:
                found.append((rel(page), paths))
    return found


def test_reserved_paths_are_listed_where_routes_are_explained():
    pages = {page for page, _ in reserved_path_lists()}
    assert {"docs/architecture.md", "docs/plugins/writing-a-plugin.md"} <= pages


def test_every_list_of_reserved_paths_is_the_runtime_s():
    for page, paths in reserved_path_lists():
        assert sorted(paths) == sorted(RESERVED_PREFIXES), (
            f"{page} lists the reserved paths {paths}; courtyard_sdk.paths has "
            f"{list(RESERVED_PREFIXES)}"
        )


# Command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, ...]]:
    """Every command path of `courtyard` (groups and their subcommands, those the
    first-party plugins add included), as seen from an empty folder with no settings."""
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(tmp_path_factory.mktemp("cli"))
        for name in list(os.environ):
            if name.startswith("COURTYARD_"):
                mp.delenv(name)
        found: list[tuple[str, ...]] = []

        def walk(group: click.Group, path: tuple[str, ...], ctx: click.Context) -> None:
            for name in group.list_commands(ctx):
                command = group.get_command(ctx, name)
                assert command is not None
                found.append((*path, name))
                if isinstance(command, click.Group):
                    walk(command, (*path, name), click.Context(command, ctx, info_name=name))

        walk(main, (), click.Context(main, info_name="courtyard"))
        return found
    finally:
        mp.undo()


def documented_commands() -> set[tuple[str, ...]]:
    """The command paths README.md and docs/ write as `courtyard <command> ...`, with
    `a|b` alternatives expanded (`courtyard apps pack|upload`)."""
    word = r"[a-z][a-z-]*(?:\|[a-z][a-z-]*)*"
    found = set()
    for page in PAGES:
        for match in re.finditer(rf"\bcourtyard((?: {word}){{1,3}})", text(page)):
            words = [w.split("|") for w in match[1].split()]
            for length in range(1, len(words) + 1):
                found.update(itertools.product(*words[:length]))
    return found


def test_the_command_line_has_commands(commands):
    assert {("serve",), ("plugins", "list"), ("keys", "create"), ("worker",)} <= set(commands)


def test_every_command_is_documented(commands):
    missing = [" ".join(c) for c in commands if c not in documented_commands()]
    assert not missing, f"README.md and docs/ never show `courtyard <command>` for: {missing}"


def test_every_command_s_help_runs(commands, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for path in [(), *commands]:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, f"courtyard {' '.join(path)} --help: {result.output}"
        assert "Usage:" in result.output


# SDK reference -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(courtyard_sdk.__all__))
def test_every_sdk_name_is_in_the_reference(name):
    reference = text(PLUGIN_DOCS / "sdk-reference.md")
    assert re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", reference), (
        f"courtyard_sdk.{name} is exported but docs/plugins/sdk-reference.md never names it"
    )


def python_block_after(path: Path, heading: str) -> str:
    """The first Python code block under `heading`."""
    match = re.search(r"```python\n(.*?)```", section(path, heading), re.S)
    assert match, f"no Python example under {heading} in {rel(path)}"
    return match[1]


def test_building_a_context_yourself_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = python_block_after(PLUGIN_DOCS / "sdk-reference.md", "### Building a context yourself")
    exec(compile(code, "sdk-reference.md", "exec"), {})
    # ... and what the page says of a context built without the data folder:
    without = code.replace('    _data_dir=Path("data/plugin-data/hello"),\n', "")
    assert without != code
    with pytest.raises(TypeError, match="_data_dir"):
        exec(compile(without, "sdk-reference.md", "exec"), {})


def test_the_hookspecs_example_prints_what_it_says():
    block = python_block_after(PLUGIN_DOCS / "sdk-reference.md", "### `hookspecs`")
    expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "sdk-reference.md", "exec"), {})
    assert out.getvalue().splitlines() == expected


# Links ---------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose_lines(path):
        if match := re.match(r"#{1,6} (.+)", line):
            base = anchor(match[1])
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def relative_links() -> list[tuple[str, int, str]]:
    return [
        (rel(page), number, target)
        for page in PAGES
        for number, line in prose_lines(page)
        for target in _LINK.findall(_CODE_SPAN.sub("", line))  # `[a-z]([-a-z]*)` is code
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:, ...
    ]


def test_there_are_links():
    assert len(relative_links()) > 100


@pytest.mark.parametrize(
    ("page", "line", "target"), relative_links(), ids=lambda v: str(v).replace("/", "-")
)
def test_every_relative_link_leads_somewhere(page, line, target):
    file, _, fragment = target.partition("#")
    destination = (ROOT / page).parent / file if file else ROOT / page
    assert destination.exists(), f"{page}:{line}: {target}: {file} does not exist"
    if fragment:
        assert destination.suffix == ".md", f"{page}:{line}: {target}: an anchor in a non-page"
        assert fragment in anchors(destination), (
            f"{page}:{line}: {target}: {rel(destination.resolve())} has no heading #{fragment}"
        )


def test_index_links_every_page():
    linked = {
        ((DOCS / target.partition("#")[0]).resolve())
        for _, line in prose_lines(DOCS / "index.md")
        for target in _LINK.findall(line)
        if target.partition("#")[0]
    }
    missing = [rel(p) for p in sorted(DOCS.rglob("*.md")) if p != DOCS / "index.md"]
    missing = [p for p in missing if (ROOT / p).resolve() not in linked]
    assert not missing, f"docs/index.md does not link {missing}"


# One machine, internal documents -------------------------------------------------------

_MACHINE_PATHS = re.compile(r"/root/|/home/\w|/tmp/tmp\.|/work/|/tmp/pytest-of-|/tmp/tut/")
_INTERNAL = re.compile(r"\bseeds?\s*#?\d+|\bseeds/|\bissues?\s*#?\d+", re.I)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_page_shows_one_machine_s_paths(page):
    found = [
        f"{rel(page)}:{n}: {line.strip()}"
        for n, line in enumerate(text(page).splitlines(), 1)
        if _MACHINE_PATHS.search(line)
    ]
    assert not found, "paths of one machine (write /.../, $WORK or <data_dir>):\n" + "\n".join(
        found
    )


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_page_cites_internal_documents(page):
    found = [
        f"{rel(page)}:{n}: {line.strip()}"
        for n, line in enumerate(text(page).splitlines(), 1)
        if _INTERNAL.search(line)
    ]
    assert not found, (
        "internal documents cited (name the system: Buntime's API, runqy's API, RustCI's "
        "runner API, go-web-nats' platform API, Stella Ops' release API):\n" + "\n".join(found)
    )


# The README's layout -------------------------------------------------------------------


def layout_paths() -> list[str]:
    """The paths the README's layout block lists: an entry starts its line (indented two
    spaces per level under its folder), its description follows; continuation lines are
    indented further than any entry."""
    block = re.search(r"One uv workspace:\n\n```\n(.*?)```", text(ROOT / "README.md"), re.S)
    assert block, "README.md has no layout block"
    paths, parents = [], []
    for line in block[1].splitlines():
        indent = len(line) - len(line.lstrip())
        if indent >= 12 or not line.strip():
            continue  # a description's continuation
        level, entry = indent // 2, line.split()[0]
        parents = [*parents[:level], entry]
        paths.append("".join(parents))
    return paths


def test_the_layout_lists_only_what_exists():
    missing = [p for p in layout_paths() if not (ROOT / p).exists()]
    assert not missing, f"README.md's layout lists what the repository does not hold: {missing}"


def test_the_layout_lists_what_there_is():
    listed = {p.rstrip("/") for p in layout_paths()}
    package = Path("runtime/src/courtyard")
    # What git ignores (the lock file, the virtual environment, a data folder) is not
    # part of the layout.
    ignored = {
        line.strip().strip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    expected = {
        *(
            p.name
            for p in ROOT.iterdir()
            if not p.name.startswith(".") and p.name not in {"README.md", *ignored}
        ),
        ".ci/run",
        *(f"plugins/{p.name}" for p in (ROOT / "plugins").iterdir() if p.is_dir()),
        *(
            str(package / p.name)
            for p in (ROOT / package).iterdir()
            if p.is_dir() and not p.name.startswith("__")
        ),
        str(package / "testing.py"),
    }
    missing = sorted(expected - listed)
    assert not missing, f"README.md's layout does not list {missing}"
