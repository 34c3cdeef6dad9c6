"""Managing plugins and apps on a running Courtyard server from the command line.

`add_remote_commands` adds `pack`, `upload`, `loaded`, `remove` and `reload` to the
`courtyard plugins` group and a `courtyard apps` group (`pack`, `upload`, `list`,
`remove`); `remote_list` is what `courtyard plugins list --url ...` prints.

Every request says `X-Courtyard-Internal: true` (the CLI is not a browser: CSRF checks are
for browsers) and, given an API key, sends it as `Authorization: Bearer <key>` and
`X-API-Key`. A failure prints `error: CODE: message` on stderr (the server's code, or one
of CONNECTION_FAILED, TIMEOUT, UPLOAD_INTERRUPTED, INVALID_URL, BAD_RESPONSE,
HTTP_<status>, HTTP_ERROR, INVALID_MANIFEST, PATH_TRAVERSAL, PACK_FAILED, IO_ERROR) and
exits 1; with `--json` the same error also goes to stdout as `{"error": {"code",
"message"}}`. httpx and rich are imported only when a command runs, so that
`courtyard --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar
from urllib.parse import quote

import click

from .packing import Kind, Packed, PackError, pack

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

DEFAULT_URL = "http://127.0.0.1:8000"
INTERNAL_HEADER = "X-Courtyard-Internal"
TIMEOUT = 300.0  # an upload waits for the install and the plugin reload it triggers
CONNECT_TIMEOUT = 10.0
F = TypeVar("F", bound=Callable[..., Any])


class RemoteError(Exception):
    """A request that failed: the server's error `code` and `message`, or the CLI's own."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


# -- options ---------------------------------------------------------------------------


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/]", value, re.IGNORECASE):
        raise click.BadParameter("must be an http:// or https:// URL, such as " + DEFAULT_URL)
    return value


def remote_options(default_url: str | None = DEFAULT_URL) -> Callable[[F], F]:
    """`--url` (env COURTYARD_URL) and `--api-key` (env COURTYARD_API_KEY).

    :param default_url: None for a command that works locally unless given a URL.
    """
    url_help = (
        "The Courtyard server to talk to."
        if default_url
        else "List the plugins of the Courtyard server at this URL instead."
    )

    def decorate(func: F) -> F:
        func = click.option(
            "--api-key",
            envvar="COURTYARD_API_KEY",
            show_envvar=True,
            help="Sent as 'Authorization: Bearer <key>' and 'X-API-Key'.",
        )(func)
        return click.option(
            "--url",
            envvar="COURTYARD_URL",
            default=default_url,
            show_default=default_url is not None,
            show_envvar=True,
            callback=_check_url,
            help=url_help,
        )(func)

    return decorate


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _reported(func: F) -> F:
    """Turn a RemoteError or PackError into `error: CODE: message` and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (RemoteError, PackError) as exc:
            _fail(exc.code, exc.message, bool(kwargs.get("as_json")))
        except OSError as exc:  # a local file unreadable or unwritable: no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            _fail("IO_ERROR", f"{where}{exc.strerror or exc}", bool(kwargs.get("as_json")))

    return wrapper  # type: ignore[return-value]


def _fail(code: str, message: str, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}, indent=2))
    click.echo(f"error: {code}: {message}", err=True)
    raise click.exceptions.Exit(1)


# -- output ----------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 4096  # piped: never fold a path or a name onto two lines
    return console


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _print_table(columns: list[str], rows: list[list[str]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: no markup in names or paths
    _console().print(table)


def _note(message: str) -> None:
    """A line for humans on stderr (stdout stays for results)."""
    click.echo(message, err=True)


# -- HTTP ------------------------------------------------------------------------------


def _client(url: str, api_key: str | None) -> httpx.Client:
    import httpx

    from . import __version__

    headers = {
        INTERNAL_HEADER: "true",
        "Accept": "application/json",
        "User-Agent": f"courtyard-cli/{__version__}",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
        headers["X-API-Key"] = api_key
    return httpx.Client(
        base_url=url,
        headers=headers,
        timeout=httpx.Timeout(TIMEOUT, connect=CONNECT_TIMEOUT),
        follow_redirects=False,  # a redirect would mean a wrong --url; never resend the key
    )


def request(
    url: str,
    api_key: str | None,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    files: dict[str, Any] | None = None,
) -> Any:
    """Send one request to the server at `url` and return its JSON answer.

    :raises RemoteError: the server's error code and message, or CONNECTION_FAILED,
        TIMEOUT, UPLOAD_INTERRUPTED, BAD_RESPONSE or HTTP_<status>.
    """
    import httpx

    try:
        with _client(url, api_key) as client:
            answer = client.request(method, path, params=params, files=files)
    except httpx.TimeoutException as exc:
        raise RemoteError("TIMEOUT", f"{url} did not answer in time ({_describe(exc)})") from None
    except httpx.WriteError as exc:
        raise RemoteError(
            "UPLOAD_INTERRUPTED",
            f"{url} closed the connection during the upload ({_describe(exc)}); "
            "the archive may exceed the server's upload limit",
        ) from None
    except httpx.UnsupportedProtocol as exc:
        raise RemoteError("INVALID_URL", f"{url}: {_describe(exc)}") from None
    except httpx.TransportError as exc:
        raise RemoteError(
            "CONNECTION_FAILED",
            f"cannot connect to {url}: {_describe(exc)} "
            "(is the server running? set --url or COURTYARD_URL)",
        ) from None
    except httpx.InvalidURL as exc:
        raise RemoteError("INVALID_URL", f"{url}: {_describe(exc)}") from None
    except httpx.HTTPError as exc:
        raise RemoteError("HTTP_ERROR", f"{url}: {_describe(exc)}") from None
    return _answer(answer)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _answer(answer: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; a RemoteError for anything else."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    where = f"{answer.request.method} {answer.request.url}"
    if answer.is_success:
        if body is None:
            raise RemoteError(
                "BAD_RESPONSE",
                f"{where} answered {answer.status_code} without JSON: is this a Courtyard server?",
                answer.status_code,
            )
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        raise RemoteError(error["code"], str(error.get("message", "")), answer.status_code)
    text = " ".join(answer.text.split())[:200]
    raise RemoteError(
        f"HTTP_{answer.status_code}",
        f"{where} answered {answer.status_code} {answer.reason_phrase}"
        + (f": {text}" if text else ""),
        answer.status_code,
    )


class _ProgressReader:
    """A binary file that reports how far it has been read (httpx reads it in chunks)."""

    def __init__(self, raw: BinaryIO, moved: Callable[[int], None]) -> None:
        self._raw = raw
        self._moved = moved

    def read(self, size: int = -1) -> bytes:
        """Read from the file and report the new position."""
        chunk = self._raw.read(size)
        self._moved(self._raw.tell())
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek (httpx rewinds before sending) and report the new position."""
        position = self._raw.seek(offset, whence)
        self._moved(position)
        return position

    def tell(self) -> int:
        """The position in the file."""
        return self._raw.tell()

    def fileno(self) -> int:
        """The file's descriptor: httpx measures the file with it (Content-Length)."""
        return self._raw.fileno()


def _send_archive(
    kind: Kind, archive: Path, url: str, api_key: str | None, as_json: bool, overwrite: bool
) -> Any:
    """Stream `archive` to `POST /api/<kind>s/upload`, with a progress bar on a terminal."""
    params = {"overwrite": "true"} if overwrite else None
    content_type = (
        "application/zip" if archive.name.lower().endswith(".zip") else "application/gzip"
    )
    size = archive.stat().st_size
    console = _console(stderr=True)
    with archive.open("rb") as raw:
        if as_json or not console.is_terminal:
            reader = _ProgressReader(raw, lambda _: None)
            files = {"file": (archive.name, reader, content_type)}
            return request(url, api_key, "POST", f"/api/{kind}s/upload", params=params, files=files)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"uploading {archive.name}", total=size)

            def moved(position: int) -> None:
                sent = position >= size
                label = f"installing {archive.name}" if sent else f"uploading {archive.name}"
                progress.update(task, completed=position, description=label)

            reader = _ProgressReader(raw, moved)
            files = {"file": (archive.name, reader, content_type)}
            return request(url, api_key, "POST", f"/api/{kind}s/upload", params=params, files=files)


def upload(
    kind: Kind,
    source: Path,
    url: str,
    api_key: str | None,
    as_json: bool = False,
    overwrite: bool = False,
) -> Any:
    """Upload an archive, or a folder packed first, and return the server's answer."""
    if not source.is_dir():
        return _send_archive(kind, source, url, api_key, as_json, overwrite)
    with tempfile.TemporaryDirectory(prefix="courtyard-pack-") as tmp:
        packed = pack(source, kind, Path(tmp))
        if not as_json:
            _note(f"packed {packed.name} {packed.version}: {_summary(packed)}")
        return _send_archive(kind, packed.path, url, api_key, as_json, overwrite)


def _summary(packed: Packed) -> str:
    from rich.filesize import decimal

    return f"{packed.files} files, {decimal(packed.size)}"


def _rows(body: Any) -> list[dict[str, Any]]:
    """A list answer's rows; BAD_RESPONSE if the answer is not a list of objects."""
    if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
        raise RemoteError("BAD_RESPONSE", "expected a JSON list of objects: is --url right?")
    return body


def _print_upload(kind: Kind, body: Any, as_json: bool) -> None:
    if as_json:
        _print_json(body)
        return
    item = body.get("data", {}).get(kind, {}) if isinstance(body, dict) else {}
    click.echo(
        f"uploaded {kind} {item.get('name', '?')} {item.get('version', '?')}"
        f" to {item.get('installedAt', '?')}"
    )


# -- commands --------------------------------------------------------------------------

_folder = click.Path(exists=True, file_okay=False, path_type=Path)
_file_or_folder = click.Path(exists=True, path_type=Path)
_output = click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="The archive's path, or a folder for it [default: ./<name>-<version>.tgz].",
)


def _pack_command(kind: Kind) -> click.Command:
    manifest = "plugin.toml" if kind == "plugin" else "package.json or app.toml"

    @click.command(
        "pack",
        short_help=f"Pack a {kind} folder into a .tgz the runtime accepts.",
        help=f"Pack the {kind} in DIR into a .tgz the runtime accepts, its manifest "
        f"({manifest}) checked first as the server checks it. Dot files (but .well-known), "
        "__pycache__, node_modules, virtualenvs and *.pyc are left out; symbolic links are "
        "refused.",
    )
    @click.argument("folder", metavar="DIR", type=_folder)
    @_output
    @_json_option
    @_reported
    def command(folder: Path, output: Path | None, as_json: bool) -> None:
        packed = pack(folder, kind, output)
        if as_json:
            _print_json(
                {
                    "name": packed.name,
                    "version": packed.version,
                    "path": str(packed.path),
                    "files": packed.files,
                    "bytes": packed.size,
                }
            )
            return
        click.echo(f"packed {packed.name} {packed.version}: {_summary(packed)} -> {packed.path}")

    return command


@click.command("upload")
@click.argument("source", metavar="FILE_OR_DIR", type=_file_or_folder)
@remote_options()
@_json_option
@_reported
def plugins_upload(source: Path, url: str, api_key: str | None, as_json: bool) -> None:
    """Install a plugin on the server from an archive or a folder.

    FILE_OR_DIR is a .tgz, .tar.gz or .zip, or a plugin folder (packed first). The server
    installs it in its first plugin directory and reloads its plugins.
    """
    _print_upload("plugin", upload("plugin", source, url, api_key, as_json), as_json)


@click.command("loaded")
@remote_options()
@_json_option
@_reported
def plugins_loaded(url: str, api_key: str | None, as_json: bool) -> None:
    """List the plugins the server runs, in dependency order."""
    rows = _rows(request(url, api_key, "GET", "/api/plugins/loaded"))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no plugins loaded")
        return
    _print_table(
        ["Name", "Base", "Dependencies", "Menus"],
        [
            [
                row.get("name", ""),
                row.get("base", ""),
                ", ".join(
                    [
                        *row.get("dependencies", []),
                        *(f"{d} (optional)" for d in row.get("optionalDependencies", [])),
                    ]
                ),
                ", ".join(m.get("title", "") for m in row.get("menus", [])),
            ]
            for row in rows
        ],
    )


@click.command("remove")
@click.argument("name")
@remote_options()
@_json_option
@_reported
def plugins_remove(name: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Remove a plugin from the server.

    NAME's files go from the server's plugin directory, then the server reloads its plugins.
    """
    body = request(url, api_key, "DELETE", f"/api/plugins/{quote(name, safe='')}")
    if as_json:
        _print_json(body)
    else:
        click.echo(f"removed plugin {name}")


@click.command("reload")
@remote_options()
@_json_option
@_reported
def plugins_reload(url: str, api_key: str | None, as_json: bool) -> None:
    """Reload the server's plugins.

    The server re-scans its plugin directories; the exit status is 1 if any plugin failed.
    """
    body = request(url, api_key, "POST", "/api/plugins/reload")
    failed = body.get("failed", []) if isinstance(body, dict) else []
    if as_json:
        _print_json(body)
    else:
        plugins = body.get("plugins", []) if isinstance(body, dict) else []
        click.echo(f"reloaded: {len(plugins)} loaded, {len(failed)} failed")
        if plugins:
            _print_table(
                ["Name", "Base"], [[p.get("name", ""), p.get("base", "")] for p in plugins]
            )
        for item in failed:
            click.echo(f"failed: {item.get('name')}: {item.get('error')}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


def remote_list(url: str, api_key: str | None, as_json: bool) -> None:
    """Print the plugins the server at `url` finds on disk, as `courtyard plugins list` does
    locally: a table (exit status 1 if any plugin failed) or, with `as_json`, JSON."""
    try:
        rows = _rows(request(url, api_key, "GET", "/api/plugins/"))
    except RemoteError as exc:
        _fail(exc.code, exc.message, as_json)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no plugins found")
        return
    columns = ["Name", "Version", "Status", "Source", "Path"]
    with_errors = any(row.get("error") for row in rows)
    _print_table(
        [*columns, "Error"] if with_errors else columns,
        [
            [
                str(row.get("name") or ""),
                str(row.get("version") or "-"),
                str(row.get("status") or ""),
                str(row.get("source") or ""),
                str(row.get("path") or ""),
                *([str(row.get("error") or "")] if with_errors else []),
            ]
            for row in rows
        ],
    )
    if any(row.get("status") == "failed" for row in rows):
        raise click.exceptions.Exit(1)


@click.command("upload")
@click.argument("source", metavar="FILE_OR_DIR", type=_file_or_folder)
@click.option("--overwrite", is_flag=True, help="Replace the version if it is installed.")
@remote_options()
@_json_option
@_reported
def apps_upload(
    source: Path, overwrite: bool, url: str, api_key: str | None, as_json: bool
) -> None:
    """Install an app version on the server from an archive or a folder.

    FILE_OR_DIR is a .tgz, .tar.gz or .zip, or an app folder (packed first). Versions are
    immutable: an installed one is refused (409 VERSION_EXISTS) unless --overwrite.
    """
    _print_upload("app", upload("app", source, url, api_key, as_json, overwrite), as_json)


@click.command("list")
@remote_options()
@_json_option
@_reported
def apps_list(url: str, api_key: str | None, as_json: bool) -> None:
    """List the apps installed on the server, with their versions."""
    rows = _rows(request(url, api_key, "GET", "/api/apps/"))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no apps installed")
        return
    _print_table(
        ["Name", "Versions", "Path"],
        [[r.get("name", ""), ", ".join(r.get("versions", [])), r.get("path", "")] for r in rows],
    )


def app_path(name: str, version: str | None = None) -> str:
    """`/api/apps/:scope/:name[/:version]` for app `name` (scope `_` when unscoped)."""
    from courtyard_sdk import is_valid_name

    if not is_valid_name(name):
        raise click.BadParameter(f"{name!r} is not a [@scope/]name app name", param_hint="NAME")
    scope, _, bare = name.rpartition("/")
    path = f"/api/apps/{quote(scope or '_', safe='@')}/{quote(bare, safe='')}"
    return path + (f"/{quote(version, safe='')}" if version else "")


@click.command("remove")
@click.argument("name")
@click.argument("version", required=False)
@remote_options()
@_json_option
@_reported
def apps_remove(
    name: str, version: str | None, url: str, api_key: str | None, as_json: bool
) -> None:
    """Remove an app, or one version of it, from the server."""
    body = request(url, api_key, "DELETE", app_path(name, version))
    if as_json:
        _print_json(body)
    else:
        click.echo(f"removed app {name}" + (f" {version}" if version else ""))


def add_remote_commands(plugins: click.Group, main: click.Group) -> None:
    """Add `pack`, `upload`, `loaded`, `remove` and `reload` to the `plugins` group and an
    `apps` group (`pack`, `upload`, `list`, `remove`) to `main`."""
    plugins.add_command(_pack_command("plugin"))
    for command in (plugins_upload, plugins_loaded, plugins_remove, plugins_reload):
        plugins.add_command(command)
    apps = click.Group("apps", help="Pack apps, and manage those of a running server.")
    apps.add_command(_pack_command("app"))
    for command in (apps_upload, apps_list, apps_remove):
        apps.add_command(command)
    main.add_command(apps)
