"""Runtime settings: flag > `COURTYARD_*` environment > `courtyard.toml` > default."""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from courtyard_sdk import SettingsError, is_valid_name
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .database_urls import async_url
from .proxies import networks


@functools.cache  # asked on the app path under load (a busy app's worker limit)
def usable_cores() -> int:
    """The cores this process may run on (what `workers = 0` and an app's `processes = 0`
    count), as it started."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


CONFIG_FILE = "courtyard.toml"
ENV_PREFIX = "COURTYARD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Settings(BaseModel):
    """Everything the runtime is configured with; see docs/configuration.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The HTTP server and event loop `courtyard serve` runs on (servers/): the fastest
    # pair by default (docs/performance.md#servers-and-event-loops).
    server: Literal["granian", "hypercorn"] = "granian"
    loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Server processes sharing the address (`courtyard serve --workers N`,
    # servers/supervisor.py); 0: one per usable core beyond loopback, 1 on loopback.
    workers: int = Field(default=0, ge=0, le=1024)
    plugin_dirs: tuple[Path, ...] | None = None
    app_dirs: tuple[Path, ...] | None = None
    data_dir: Path = Path("data")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    strict: bool = False
    entry_points: bool = True
    only_plugins: tuple[str, ...] | None = None
    trace_hooks: bool = False
    startup_timeout: float = Field(default=30.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    docs_script: str | None = None
    docs_script_integrity: str | None = None  # needed when docs_script is a URL
    upload_max_bytes: int = Field(default=100 * 1024**2, gt=0)
    upload_max_extracted_bytes: int = Field(default=500 * 1024**2, gt=0)
    upload_max_entries: int = Field(default=10_000, gt=0)
    upload_max_ratio: float = Field(default=100.0, gt=1)
    upload_max_path_length: int = Field(default=255, gt=0)
    upload_max_depth: int = Field(default=32, gt=0)
    # Request limits (docs/security.md): every body in flight together, and how long a
    # client may go without sending anything.
    bodies_max_total_bytes: int = Field(default=256 * 1024**2, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    # Who may reach the server: Host names besides loopback and the bound address.
    allowed_hosts: tuple[str, ...] = ()
    # Load balancers whose X-Forwarded-Proto and X-Forwarded-For are believed (proxies.py).
    trusted_proxies: tuple[str, ...] = ()
    # App workers (docs/apps.md): sandboxed with bubblewrap; without it they do not start.
    apps_allow_unsandboxed: bool = False
    apps_sandbox_user: str = "nobody"
    # Platform services (docs/security.md, docs/database.md, docs/events.md).
    database_url: str | None = None
    redis_url: str | None = None
    event_bus: Literal["memory", "redis"] = "memory"
    event_history: int = Field(default=1000, ge=0)
    insecure: bool = False
    # Several instances (docs/deployment.md): this one's id in the shared store, its logs
    # and /api/cluster/ (default `<hostname>-<pid>`), and whether /api/health/ shows it.
    instance_id: str | None = Field(default=None, min_length=1, max_length=128)
    health_details: bool = False
    jwt_secret: str | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")
    jwt_leeway: float = Field(default=30.0, ge=0)
    # Failed authentications per client address and minute before 429.
    auth_failures_per_minute: int = Field(default=30, gt=0)
    audit: bool = True
    # The operator console (docs/console.md): its sessions' lifetime in seconds, and the
    # app that `/` sends to instead of the console (which then lives at /console/).
    session_lifetime: float = Field(default=8 * 3600.0, ge=60, le=30 * 86400)
    root_app: str | None = None
    audit_retention_days: int = Field(default=90, ge=0)
    roles: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        # Checked when settings are read, so that every command reports a bad URL cleanly.
        if value is not None:
            async_url(value)  # raises SettingsError naming the problem
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks(value)  # raises SettingsError naming a bad entry
        return value

    @field_validator("root_app")
    @classmethod
    def _root_app(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_name(value):
            raise ValueError(f"{value!r} is not an app name ([@scope/]name)")
        return value

    @model_validator(mode="after")
    def _event_bus(self) -> Settings:
        # Checked when settings are read, so that every command reports it cleanly.
        check_event_bus(self)  # raises SettingsError naming the problem
        return self

    @property
    def plugin_folders(self) -> tuple[Path, ...]:
        """The plugin directories in force: configured ones, else `<data_dir>/plugins`."""
        if self.plugin_dirs is None:
            return (self.data_dir / "plugins",)
        return self.plugin_dirs

    @property
    def database(self) -> str:
        """The database URL in force: `database_url`, else SQLite under the data dir."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'courtyard.db'}"

    @property
    def app_folders(self) -> tuple[Path, ...]:
        """The app directories in force: configured ones, else `<data_dir>/apps`."""
        if self.app_dirs is None:
            return (self.data_dir / "apps",)
        return self.app_dirs


_LIST_FIELDS = {"plugin_dirs", "app_dirs"}
_NAME_LIST_FIELDS = {"only_plugins", "jwt_algorithms", "allowed_hosts", "trusted_proxies"}
_PATH_FIELDS = {"data_dir", "jwks_file", *_LIST_FIELDS}
_BOOL_FIELDS = {
    "strict",
    "entry_points",
    "trace_hooks",
    "insecure",
    "audit",
    "apps_allow_unsandboxed",
    "health_details",
}
_FILE_ONLY = {"plugins", "roles"}
ENV_FIELDS = [name for name in Settings.model_fields if name not in _FILE_ONLY]


def env_name(field: str) -> str:
    """The environment variable that sets `field` (`plugin_dirs` -> `COURTYARD_PLUGIN_DIRS`)."""
    return ENV_PREFIX + field.upper()


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in ENV_FIELDS:
        raw = environ.get(env_name(field))
        if raw is None or (not raw.strip() and field in _LIST_FIELDS | _NAME_LIST_FIELDS):
            continue  # an empty list variable means "not set", not "nothing at all"
        if field in _LIST_FIELDS:
            values[field] = [Path(p) for p in raw.split(os.pathsep) if p]
        elif field in _NAME_LIST_FIELDS:
            values[field] = [n.strip() for n in raw.split(",") if n.strip()]
        elif field in _BOOL_FIELDS:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise SettingsError(f"{env_name(field)}={raw!r}: expected true or false")
            values[field] = raw.strip().lower() in _TRUE
        else:
            values[field] = raw
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None

    # Relative paths in a config file are relative to the file, as in pyproject.toml.
    def beside_file(value: object) -> object:
        return path.parent / Path(value).expanduser() if isinstance(value, str) else value

    for field in _PATH_FIELDS & data.keys():
        value = data[field]
        data[field] = (
            [beside_file(v) for v in value] if isinstance(value, list) else beside_file(value)
        )
    script = data.get("docs_script")
    if isinstance(script, str) and not script.startswith(("http://", "https://")):
        data["docs_script"] = str(beside_file(script))
    return data


def config_file(flag: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The config file in force: `--config`, `COURTYARD_CONFIG`, else `./courtyard.toml`."""
    chosen = flag or environ.get(env_name("config"))
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist")
        return path
    default = Path(CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the four sources of settings and validate them.

    :param flags: command-line values; None means "not given".
    :param environ: the environment (defaults to `os.environ`).
    :param config: an explicit config file (`--config`).
    :raises SettingsError: naming the source and key of a bad or unknown value.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file(config, environ)
    if path is not None:
        merged.update(_from_file(path))
    merged.update(_from_env(environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None and v != ()})
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: "
            f"{'unknown setting' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    return settings.model_copy(update=_absolute_paths(settings))


def _absolute_paths(settings: Settings) -> dict[str, Any]:
    def absolute(paths: tuple[Path, ...] | None) -> tuple[Path, ...] | None:
        return None if paths is None else tuple(p.expanduser().absolute() for p in paths)

    return {
        "data_dir": settings.data_dir.expanduser().absolute(),
        "jwks_file": settings.jwks_file and settings.jwks_file.expanduser().absolute(),
        "plugin_dirs": absolute(settings.plugin_dirs),
        "app_dirs": absolute(settings.app_dirs),
    }


def check_event_bus(settings: Settings) -> None:
    """Check the event bus settings (no I/O).

    :raises SettingsError: `event_bus = "redis"` without a valid `redis_url`.
    """
    if settings.event_bus != "redis":
        return
    if not settings.redis_url:
        raise SettingsError(
            'event_bus = "redis" needs redis_url (COURTYARD_REDIS_URL), '
            "for example redis://127.0.0.1:6379/0"
        )
    from redis.asyncio.connection import parse_url

    try:
        parse_url(settings.redis_url)
    except ValueError as exc:
        raise SettingsError(f"redis_url: {exc}") from None
