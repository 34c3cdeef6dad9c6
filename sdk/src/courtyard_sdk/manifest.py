"""The declarative plugin manifest, `plugin.toml`, readable without importing plugin code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .errors import ManifestError, SettingsError
from .identity import is_permission
from .names import is_valid_name
from .paths import RESERVED_BASES

MANIFEST_FILE = "plugin.toml"
BASE_RE = re.compile(r"^/(?:[a-z0-9_-]+)?\Z")
ICON_RE = re.compile(r"^[a-z0-9-]+:[a-z0-9-]+\Z")
SETTING_KEY_RE = re.compile(r"^[a-z_][a-z0-9_]*\Z")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Menu(_Strict):
    """A UI menu entry a plugin contributes; `items` nest sub-entries."""

    title: str = Field(min_length=1)
    path: str
    icon: str | None = None
    items: tuple[Menu, ...] = ()

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/") or "//" in value or ".." in value.split("/"):
            raise ValueError("must be an absolute path such as /database")
        return value

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str | None) -> str | None:
        if value is not None and not ICON_RE.match(value):
            raise ValueError("must look like 'set:name', for example 'lucide:database'")
        return value

    def to_json(self) -> dict[str, Any]:
        """Return the menu as the seed's JSON (`title`, `icon`, `path`, `items` if any)."""
        out: dict[str, Any] = {"title": self.title, "icon": self.icon, "path": self.path}
        if self.items:
            out["items"] = [item.to_json() for item in self.items]
        return out

    def paths(self) -> list[str]:
        """Every path this entry and its items claim."""
        return [self.path, *(p for item in self.items for p in item.paths())]


SettingType = Literal["string", "integer", "number", "boolean", "array", "table"]
_PY_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "table": dict,
}


class _Bounds(TypedDict, total=False):
    """The bounds of a number setting, as `Field` keywords."""

    ge: float
    le: float


class SettingSpec(_Strict):
    """One key of a plugin's config schema (`[config.<key>]` in `plugin.toml`)."""

    type: SettingType = "string"
    default: Any = None
    required: bool = False
    description: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SettingSpec:
        if (self.minimum, self.maximum) != (None, None) and self.type not in ("integer", "number"):
            raise ValueError("minimum and maximum apply to integer and number settings only")
        if self.choices is not None:
            if (self.minimum, self.maximum) != (None, None):
                raise ValueError("choices and minimum/maximum do not go together")
            for choice in self.choices:
                try:
                    TypeAdapter(_PY_TYPES[self.type]).validate_python(choice, strict=True)
                except ValidationError:
                    raise ValueError(f"choice {choice!r} is not of type {self.type}") from None
        if self.default is not None:
            try:
                TypeAdapter(self.annotation()).validate_python(self.default)
            except ValidationError as exc:
                raise ValueError(f"default {self.default!r}: {exc.errors()[0]['msg']}") from None
        return self

    def annotation(self) -> Any:
        """The type a value must have: strict (no "3" for 3), within choices and bounds."""
        if self.choices:
            return Literal[self.choices]
        bounds: _Bounds = {}
        if self.minimum is not None:
            bounds["ge"] = self.minimum
        if self.maximum is not None:
            bounds["le"] = self.maximum
        return Annotated[_PY_TYPES[self.type], Field(strict=True, **bounds)]


class Credential(_Strict):
    """A secret the plugin's clients present (`[[credentials]]` in `plugin.toml`), such as
    the `RUNQY_API_KEY` a seed documents. The runtime's auth service accepts it as
    `Authorization: Bearer <secret>` or `X-API-Key: <secret>` and gives its holder the
    listed roles and permissions. The secret comes from the environment variable `env`,
    else from the plugin setting `setting`; while neither is set the credential is off.
    """

    # pydantic's patterns are Rust regexes, where `$` is the very end (Python's `\Z`).
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    setting: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$")
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    tenant: str | None = None

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for permission in value:
            if not is_permission(permission):
                raise ValueError(f"{permission!r} is not a permission such as 'queues:write'")
        return value

    @model_validator(mode="after")
    def _source(self) -> Credential:
        if self.env is None and self.setting is None:
            raise ValueError("a credential needs `env` or `setting` (where its secret comes from)")
        return self


class Manifest(_Strict):
    """A plugin's `plugin.toml`.

    `base` defaults to `/<name without scope>`; `module` is the Python module holding the
    hook implementations (relative to the plugin folder for directory plugins); a plugin
    without `module` contributes only what its manifest declares (menus). `migrations`
    is the folder of the plugin's Alembic revisions; `credentials` are secrets its clients
    may present (see `Credential`).
    """

    name: str
    version: str = "0.0.0"
    description: str = ""
    module: str | None = None
    base: str | None = None
    dependencies: tuple[str, ...] = ()
    optional_dependencies: tuple[str, ...] = ()
    menus: tuple[Menu, ...] = ()
    requires: tuple[str, ...] = ()
    enabled: bool = True
    config: dict[str, SettingSpec] = Field(default_factory=dict)
    migrations: str | None = None
    credentials: tuple[Credential, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError("must be [@scope/]name of lowercase letters, digits, '-', '.', '_'")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError("must be a PEP 440 or semver version such as 1.2.0") from None
        return value

    @field_validator("module")
    @classmethod
    def _module(cls, value: str | None) -> str | None:
        if value is not None and not MODULE_RE.match(value):
            raise ValueError("must be a dotted Python module name")
        return value

    @field_validator("base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not BASE_RE.match(value):
            raise ValueError("must be '/' or match ^/[a-z0-9_-]+$")
        if value in RESERVED_BASES:
            raise ValueError(f"{value} is reserved by the runtime")
        return value

    @field_validator("dependencies", "optional_dependencies")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_valid_name(name):
                raise ValueError(f"{name!r} is not a valid plugin name")
        return value

    @field_validator("config")
    @classmethod
    def _config_keys(cls, value: dict[str, SettingSpec]) -> dict[str, SettingSpec]:
        for key in value:
            if not SETTING_KEY_RE.match(key):
                raise ValueError(f"{key!r}: setting keys are lowercase identifiers")
            if key == "enabled":
                raise ValueError("'enabled' is reserved: it switches the plugin on or off")
        return value

    @field_validator("migrations")
    @classmethod
    def _migrations(cls, value: str | None) -> str | None:
        if value is not None and (
            not value or value.startswith("/") or ".." in value.replace("\\", "/").split("/")
        ):
            raise ValueError("must be a folder inside the plugin, such as 'migrations'")
        return value

    @field_validator("requires")
    @classmethod
    def _requirements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                raise ValueError(f"{text!r} is not a PEP 508 requirement: {exc}") from None
        return value

    @model_validator(mode="after")
    def _default_base(self) -> Manifest:
        if self.base is None:
            object.__setattr__(self, "base", "/" + self.name.rsplit("/", 1)[-1].replace(".", "-"))
        if self.name in self.dependencies:
            raise ValueError("a plugin cannot depend on itself")
        names = [c.name for c in self.credentials]
        if len(names) != len(set(names)):
            raise ValueError("two [[credentials]] share a name")
        for credential in self.credentials:
            if credential.setting is not None and credential.setting not in self.config:
                raise ValueError(
                    f"credential {credential.name}: setting {credential.setting!r} "
                    "is not declared under [config]"
                )
        return self

    @property
    def all_dependencies(self) -> tuple[str, ...]:
        """Required dependencies, then optional ones."""
        return self.dependencies + self.optional_dependencies

    def validate_settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """Check `values` against the declared config schema and fill in defaults.

        Raises `SettingsError` naming the plugin and the key for an unknown key, a missing
        required key or a value of the wrong type or range.
        """
        fields: dict[str, Any] = {
            key: (spec.annotation(), ...)
            if spec.required
            else (spec.annotation() | None, spec.default)
            for key, spec in self.config.items()
        }
        model = create_model("Settings", __config__=ConfigDict(extra="forbid"), **fields)
        try:
            return model.model_validate(values).model_dump()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {_describe(err)}"
                for err in exc.errors()
            )
            raise SettingsError(f"plugin {self.name}: invalid settings: {problems}") from None


def _describe(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown setting"
    return str(err["msg"])


def parse_manifest(text: str, source: str = MANIFEST_FILE) -> Manifest:
    """Parse and validate manifest text; `source` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: "
            f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in exc.errors()
        )
        raise ManifestError(f"{source}: {problems}") from None


def read_manifest(folder: Path) -> Manifest:
    """Read `<folder>/plugin.toml`."""
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from None
    return parse_manifest(text, str(path))
