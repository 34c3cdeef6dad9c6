"""`courtyard new`: project skeletons for plugins and apps, from the files in `templates/`.

`courtyard new plugin NAME` makes an installable distribution whose package folder is also
a directory plugin; `courtyard new app NAME --kind static|asgi` makes an app's version
folder. The templates use `string.Template` placeholders (`$name`, `$package`, ...).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from string import Template
from urllib.parse import unquote, urlparse

import click
from courtyard_sdk import CourtyardError, ManifestError, is_valid_name, parse_manifest
from courtyard_sdk.names import slug

from ..apps.registry import RESERVED_APP_NAMES, AppConfig
from .db import write_revision
from .pack import archive_stem

TEMPLATES = Path(__file__).parent / "templates"
APP_KINDS = ("static", "asgi")

# Generated path -> template (relative to TEMPLATES). `$package` in a path is replaced.
PLUGIN_FILES = {
    "pyproject.toml": "plugin/pyproject.toml.tmpl",
    "README.md": "plugin/README.md.tmpl",
    ".gitignore": "plugin/gitignore.tmpl",
    ".github/workflows/test.yml": "plugin/test.yml.tmpl",
    "src/$package/__init__.py": "plugin/__init__.py.tmpl",
    "src/$package/plugin.toml": "plugin/plugin.toml.tmpl",
    "src/$package/plugin.py": "plugin/plugin.py.tmpl",
    "tests/test_plugin.py": "plugin/test_plugin.py.tmpl",
}
# With --with-db: a model, its routes and tests; the first migration is drafted from it.
DB_FILES = {
    "src/$package/models.py": "plugin-db/models.py.tmpl",
    "src/$package/notes.py": "plugin-db/notes.py.tmpl",
    "tests/test_notes.py": "plugin-db/test_notes.py.tmpl",
}
# The placeholders of the plain plugin's templates that --with-db fills otherwise.
NO_DB = {
    "db_imports": "",
    "routes_type": "Blueprint",
    "routes_doc": "",
    "routes_value": "bp",
    "migrations_line": "",
}
WITH_DB = {
    "db_imports": "\nfrom . import notes\n",
    "routes_type": "list[Blueprint]",
    "routes_doc": "\n    The notes routes (notes.py) live under `$base/notes`.",
    "routes_value": "[bp, notes.blueprint(ctx)]",
    "migrations_line": 'migrations = "migrations"  # Alembic revisions: the plugin\'s tables\n',
}
APP_FILES = {
    "static": {
        "package.json": "app-static/package.json.tmpl",
        "index.html": "app-static/index.html.tmpl",
        "style.css": "app-static/style.css.tmpl",
    },
    "asgi": {
        "app.toml": "app-asgi/app.toml.tmpl",
        "app.py": "app-asgi/app.py.tmpl",
        "pyproject.toml": "app-asgi/pyproject.toml.tmpl",
        "README.md": "app-asgi/README.md.tmpl",
        ".gitignore": "app-asgi/gitignore.tmpl",
        "tests/test_app.py": "app-asgi/test_app.py.tmpl",
    },
}
# Distributions a plugin's must not be mistaken for.
TAKEN_DISTRIBUTIONS = frozenset({"courtyard", "courtyard-sdk", "courtyard-workspace"})


class ScaffoldError(ValueError):
    """The project cannot be created: a bad name, or a folder that is in the way."""


@dataclass(frozen=True)
class PluginNames:
    """Every spelling of a plugin's name the templates need.

    For `@acme/hello.world`: folder `hello.world`, archive stem `acme-hello.world`,
    distribution `courtyard-acme-hello-world`, package `courtyard_acme_hello_world`, entry
    point name `acme-hello-world`, base `/hello-world`, title `Hello World`, blueprint
    `hello_world`.
    """

    name: str
    folder: str
    stem: str
    dist: str
    package: str
    entry_name: str
    base: str
    title: str
    blueprint: str
    description: str


def short_name(name: str) -> str:
    """The name without its scope (`@acme/hello` -> `hello`)."""
    return name.rsplit("/", 1)[-1]


def check_name(name: str) -> None:
    """Raise `ScaffoldError` unless `name` is a valid `[@scope/]name`."""
    if not is_valid_name(name):
        raise ScaffoldError(
            f"invalid name {name!r}: use [@scope/]name with lowercase letters, digits, "
            "'-', '.' and '_', each part starting with a letter or a digit"
        )


def plugin_names(name: str) -> PluginNames:
    """Derive the distribution, package, base, ... of plugin `name` (checked first)."""
    check_name(name)
    short = short_name(name)
    # PEP 503 normalisation of "scope-name": runs of -, _ and . become one -.
    suffix = re.sub(r"[-_.]+", "-", name.lstrip("@").replace("/", "-")).strip("-")
    dist = suffix if suffix.startswith("courtyard-") else f"courtyard-{suffix}"
    if dist in TAKEN_DISTRIBUTIONS:
        raise ScaffoldError(
            f"plugin name {name!r} would make the distribution {dist!r}, "
            "which is Courtyard's own: choose another name"
        )
    words = [w for w in re.split(r"[-_.]+", short) if w]
    return PluginNames(
        name=name,
        folder=short,
        stem=archive_stem(name),
        dist=dist,
        package=dist.replace("-", "_"),
        entry_name=suffix,
        base="/" + short.replace(".", "-"),
        title=" ".join(w.capitalize() for w in words) or short,
        blueprint=slug(short),
        description=f"The {name} plugin for Courtyard.",
    )


def _local_checkout(dist: str) -> tuple[Path, bool] | None:
    """Where distribution `dist` was installed from, when that is a local folder (a
    checkout rather than a package index), and whether the install is editable."""
    try:
        text = distribution(dist).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    url = urlparse(str(data.get("url", "")))
    if url.scheme != "file" or "dir_info" not in data:
        return None
    folder = Path(unquote(url.path))
    if not (folder / "pyproject.toml").is_file():
        return None
    return folder, bool(data["dir_info"].get("editable", False))


def local_sources() -> str:
    """A `[tool.uv.sources]` table pointing at the Courtyard checkout this runtime and SDK
    were installed from, or "" when either came from a package index.

    With it, `uv sync` in a generated plugin project finds `courtyard-sdk` and `courtyard`
    before they are published.
    """
    found = {dist: _local_checkout(dist) for dist in ("courtyard-sdk", "courtyard")}
    lines = []
    for dist, checkout in found.items():
        if checkout is None:
            return ""
        folder, editable = checkout
        path = json.dumps(str(folder))  # a JSON string is a valid TOML basic string
        lines.append(f"{dist} = {{ path = {path}, editable = {str(editable).lower()} }}")
    return (
        "\n# Courtyard as installed where this project was generated (a local checkout, not a\n"
        "# package index); edit or remove when it moves or the packages come from an index.\n"
        "[tool.uv.sources]\n" + "\n".join(lines) + "\n"
    )


def _render(files: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """Generated path -> content, every placeholder filled (a missing one is a bug)."""
    return {
        Template(path).substitute(values): Template(
            (TEMPLATES / template).read_text(encoding="utf-8")
        ).substitute(values)
        for path, template in files.items()
    }


def _write(target: Path, rendered: dict[str, str]) -> list[Path]:
    """Write the files into `target`, which must be missing or an empty folder."""
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} already exists and is a file: choose another folder")
    if target.exists() and any(target.iterdir()):
        raise ScaffoldError(f"{target} already exists and is not empty: choose another folder")
    written = []
    for relative, content in rendered.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def create_plugin(name: str, target: Path, *, with_db: bool = False) -> list[Path]:
    """Create the project of plugin `name` in `target` and return the files written; with
    `with_db`, a plugin that stores notes in the runtime's database, its first migration
    drafted from its model.

    :raises ScaffoldError: for an invalid name, or a `target` that exists and is not empty.
    """
    names = plugin_names(name)
    values = {**asdict(names), "uv_sources": local_sources()}
    variant = {
        k: Template(v).substitute(values) for k, v in (WITH_DB if with_db else NO_DB).items()
    }
    files = {**PLUGIN_FILES, **(DB_FILES if with_db else {})}
    rendered = _render(files, {**values, **variant})
    manifest_path = f"src/{names.package}/plugin.toml"
    try:  # the manifest the runtime will read must pass its checks (a base such as /api)
        parse_manifest(rendered[manifest_path], source=manifest_path)
    except ManifestError as exc:
        raise ScaffoldError(f"plugin name {name!r} makes an invalid manifest: {exc}") from None
    tomllib.loads(rendered["pyproject.toml"])  # a template bug fails here, not in uv
    written = _write(target, rendered)
    if with_db:
        package = target / "src" / names.package
        written.append(write_revision(package, f"create the {name} tables", autogenerate=True))
    return written


def create_app(name: str, kind: str, target: Path) -> list[Path]:
    """Create an app's version folder (`kind` static or asgi) in `target`; return the files.

    :raises ScaffoldError: for an invalid name or kind, or a `target` that exists and is
        not empty.
    """
    check_name(name)
    if kind not in APP_KINDS:
        raise ScaffoldError(f"unknown app kind {kind!r}: choose one of {', '.join(APP_KINDS)}")
    values = {"name": name, "folder": short_name(name), "stem": archive_stem(name)}
    rendered = _render(APP_FILES[kind], values)
    if kind == "static":
        settings = json.loads(rendered["package.json"])["courtyard"]
    else:
        manifest = tomllib.loads(rendered["app.toml"])
        settings = {k: v for k, v in manifest.items() if k not in ("name", "version")}
    AppConfig.model_validate(settings)
    return _write(target, rendered)


def _name_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_name(value)
    except ScaffoldError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


_DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to create [default: ./NAME, without the scope].",
)


def _report(target: Path, written: list[Path], steps: list[str]) -> None:
    click.echo(f"Created {target}:")
    for path in sorted(written):
        click.echo(f"  {path.relative_to(target)}")
    click.echo("\nNext:")
    for step in steps:
        click.echo(f"  {step}")


@click.group()
def new() -> None:
    """Create a plugin or app project from a template."""


@new.command("plugin")
@click.argument("name", callback=_name_argument)
@_DIR_OPTION
@click.option(
    "--with-db",
    is_flag=True,
    help="Add a table (a model, its first migration, routes that store notes, tests).",
)
def new_plugin(name: str, directory: Path | None, with_db: bool) -> None:
    """Create plugin NAME ([@scope/]name): a distribution that is also a directory plugin."""
    target = directory or Path(short_name(name))
    try:
        written = create_plugin(name, target, with_db=with_db)
    except (ScaffoldError, CourtyardError) as exc:
        raise click.ClickException(str(exc)) from None
    names = plugin_names(name)
    _report(
        target,
        written,
        [
            f"cd {target}",
            "uv sync                  # the plugin, the runtime and pytest, in .venv",
            "uv run pytest            # the generated tests",
            f"uv run courtyard serve   # then: curl http://127.0.0.1:8000{names.base}/",
            f"uv run courtyard plugins upload src/{names.package}   # to a running server",
            "README.md tells more.",
        ],
    )


@new.command("app")
@click.argument("name", callback=_name_argument)
@click.option(
    "--kind",
    type=click.Choice(APP_KINDS),
    required=True,
    help="static: files served as they are; asgi: a Quart app run in worker processes.",
)
@_DIR_OPTION
def new_app(name: str, kind: str, directory: Path | None) -> None:
    """Create app NAME ([@scope/]name): the content of its version folder, version 0.1.0."""
    target = directory or Path(short_name(name))
    if name in RESERVED_APP_NAMES:
        raise click.ClickException(f"the app name {name!r} is reserved by the runtime")
    try:
        written = create_app(name, kind, target)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    steps = [
        f"courtyard apps upload {target}   # pack the folder and upload it to a server",
        f"or copy {target} into an app directory as {name}/0.1.0/ and open /{name}/",
    ]
    if kind == "asgi":
        steps.insert(0, f"cd {target} && python -m pytest   # needs quart and pytest-asyncio")
        steps.append("README.md tells more.")
    _report(target, written, steps)
