"""Finding installed apps and reading their manifests (`package.json` or `app.toml`)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from courtyard_sdk import is_valid_name
from packaging.version import InvalidVersion, Version
from pydantic import ValidationError, field_validator

from .config import AppSettings
from .static import StaticFiles
from .versions import sort_versions

log = logging.getLogger("courtyard.apps")
# A name the runtime's own paths start with: such an app would answer unmatched /api/...
RESERVED_APP_NAMES = frozenset({"api", "console"})  # the core API, the operator console
VERSION_RE = re.compile(r"[0-9][0-9A-Za-z.+_-]*")
ENTRY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


class AppManifestError(ValueError):
    """A version folder's manifest is missing or invalid."""


class InvalidAppName(AppManifestError):
    """The manifest's name is not a valid `[@scope/]name` (a path-traversal attempt)."""


class AppConfig(AppSettings):
    """How an app is served: `app.toml` at the top level, or `courtyard` in package.json.

    An app with `entry` is an ASGI application run in worker processes, with the settings
    of `AppSettings`; without it, a static site whose `index` file must exist.
    """

    entry: str | None = None
    index: str = "index.html"
    spa: bool = False

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str | None) -> str | None:
        if value is not None and not ENTRY_RE.match(value):
            raise ValueError("must be 'module:attribute', for example 'app:app'")
        return value

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/") or "\\" in value:
            raise ValueError("must be a path inside the app, such as index.html")
        return value


class _TomlManifest(AppConfig):
    name: str
    version: str


@dataclass(frozen=True)
class AppVersion:
    """One installed version of an app."""

    name: str
    version: str
    root: Path
    config: AppConfig
    # What its static files resolve to, for as long as this object (one scan) lives.
    files: StaticFiles = field(default_factory=StaticFiles, compare=False, repr=False)

    @property
    def key(self) -> str:
        """`name@version`: unique among installed apps."""
        return f"{self.name}@{self.version}"


def read_app_manifest(folder: Path) -> tuple[str, str, AppConfig]:
    """Read `package.json` (npm's `name` and `version`, settings under `courtyard`) or
    `app.toml` in `folder`.

    :raises AppManifestError: naming the file and what is wrong.
    """
    package, toml = folder / "package.json", folder / "app.toml"
    try:
        if package.is_file():
            source = package
            data = json.loads(package.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise AppManifestError(f"{source.name}: must hold a JSON object")
            name, version = data.get("name"), data.get("version")
            config = AppConfig.model_validate(data.get("courtyard") or {})
        elif toml.is_file():
            source = toml
            manifest = _TomlManifest.model_validate(tomllib.loads(toml.read_text("utf-8")))
            name, version = manifest.name, manifest.version
            config = AppConfig.model_validate(manifest.model_dump(exclude={"name", "version"}))
        else:
            raise AppManifestError("no package.json or app.toml")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppManifestError(f"{source.name}: unreadable: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise AppManifestError(f"{source.name}: {problems}") from None
    if not isinstance(name, str) or not is_valid_name(name):
        raise InvalidAppName(f"{source.name}: name must be [@scope/]name, got {name!r}")
    if name in RESERVED_APP_NAMES:
        raise AppManifestError(f"{source.name}: the name {name!r} is reserved by the runtime")
    if not isinstance(version, str):
        raise AppManifestError(f"{source.name}: version is required")
    try:
        if not VERSION_RE.fullmatch(version):  # it names a folder: no spaces, no "v" prefix
            raise InvalidVersion(version)
        Version(version)
    except InvalidVersion:
        raise AppManifestError(f"{source.name}: version {version!r} is not valid") from None
    if config.entry is None and not (folder / config.index).is_file():
        raise AppManifestError(f"a static app needs {config.index} (or set an ASGI `entry`)")
    return name, version, config


@dataclass
class App:
    """An installed app: its folder and its valid versions."""

    name: str
    path: Path
    versions: dict[str, AppVersion] = field(default_factory=dict)

    def equal_version(self, version: str) -> str | None:
        """The installed version equal to `version` however spelt (1.0 is 1.0.0)."""
        wanted = Version(version)
        return next((v for v in self.versions if Version(v) == wanted), None)

    def sorted_versions(self) -> list[str]:
        """Versions in ascending order."""
        return sort_versions(self.versions)


def app_folders(app_dir: Path) -> Iterator[tuple[str, Path]]:
    """`(name, folder)` of every app folder (`name/`, `@scope/name/`) in `app_dir`."""
    if not app_dir.is_dir():
        return
    for entry in sorted(app_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name.startswith("@"):
            for sub in sorted(entry.iterdir()):
                if sub.is_dir() and not sub.name.startswith("."):
                    yield f"{entry.name}/{sub.name}", sub
        else:
            yield entry.name, entry


def scan_apps(app_dirs: tuple[Path, ...]) -> dict[str, App]:
    """Every app in the app directories; the first directory holding a name wins.

    A version folder whose manifest is invalid, or names another app or version, is
    skipped with a warning.
    """
    apps: dict[str, App] = {}
    for app_dir in app_dirs:
        for name, folder in app_folders(app_dir):
            if name in apps or not is_valid_name(name):
                continue
            app = apps[name] = App(name, folder)
            for version_dir in sorted(folder.iterdir()):
                if version_dir.name.startswith(".") or not version_dir.is_dir():
                    continue
                try:
                    found_name, version, config = read_app_manifest(version_dir)
                except AppManifestError as exc:
                    log.warning("app %s %s skipped: %s", name, version_dir.name, exc)
                    continue
                if found_name != name or Version(version) != Version(version_dir.name):
                    log.warning(
                        "app %s %s skipped: its manifest says %s %s",
                        name,
                        version_dir.name,
                        found_name,
                        version,
                    )
                    continue
                # The folder's spelling is the version's name (1.0.0 and 1.0 are one).
                app.versions[version_dir.name] = AppVersion(
                    name, version_dir.name, version_dir, config
                )
    return apps


class AppRegistry:
    """The installed apps, rescanned every `ttl` seconds, so that what is copied in by
    hand, or installed by another instance, shows up here too.

    A rescan by the clock runs in a thread while the previous scan answers: with hundreds
    of versions it takes milliseconds (10 for 300 versions) that every request would
    otherwise wait for. After `invalidate` (an install or a removal here) the next look
    scans at once, and a scan in a thread that may have missed the change is dropped.
    """

    def __init__(self, app_dirs: tuple[Path, ...], ttl: float = 2.0) -> None:
        self.app_dirs = app_dirs
        self.ttl = ttl
        self._apps: dict[str, App] = {}
        self._scanned = float("-inf")  # when the scan in use began
        self._invalidated = True  # never scanned yet
        self._scans = 0  # scans put in use: a thread's scan is dropped if one came after it
        self._rescanning = False

    def apps(self) -> dict[str, App]:
        """The apps, from a scan at most `ttl` seconds old, or the one before while the
        next runs in a thread."""
        due = time.monotonic() - self._scanned > self.ttl and not self._rescanning
        if self._invalidated or (due and not self._rescan_in_thread()):
            self._use(scan_apps(self.app_dirs), time.monotonic())
        return self._apps

    def invalidate(self) -> None:
        """Rescan on the next look (after an install or a removal)."""
        self._invalidated = True

    def _use(self, apps: dict[str, App], began: float) -> None:
        self._apps, self._scanned, self._invalidated = apps, began, False
        self._scans += 1

    def _rescan_in_thread(self) -> bool:
        """Start a rescan in a thread; False where no event loop runs to start it on."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        began, scans = time.monotonic(), self._scans
        self._rescanning = True

        def done(future: asyncio.Future[dict[str, App]]) -> None:
            self._rescanning = False
            if future.cancelled() or self._scans != scans or self._invalidated:
                return  # stopping, or a newer scan is in use, or one is due at once
            if (failure := future.exception()) is not None:
                log.warning("rescanning the app directories failed: %s", failure)
                self._scanned = began  # the apps known serve on; try again after `ttl`
                return
            self._use(future.result(), began)

        loop.run_in_executor(None, scan_apps, self.app_dirs).add_done_callback(done)
        return True

    def get(self, name: str) -> App | None:
        """The app called `name`, if installed."""
        return self.apps().get(name)
