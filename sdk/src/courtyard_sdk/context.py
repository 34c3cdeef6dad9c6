"""The context each plugin's hooks receive."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from .manifest import Manifest
from .plugins import PluginDirectory
from .services import AuditLog, Database, EventBus


class _Missing:
    """Stands in for a service in a context the runtime did not make (a bare unit test)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this PluginContext has no {self._service}: only a running Courtyard provides "
            "one (in tests, use the `courtyard` fixture of courtyard.testing)"
        )


_T = TypeVar("_T")
_D = TypeVar("_D")
_ABSENT: Any = object()


class PluginState:
    """A plugin's own objects for one generation, keyed by their class: `ctx.state`.

    Set in a hook (usually `courtyard_startup`), read in the plugin's routes and other
    hooks::

        ctx.state[Gateway] = Gateway(...)  # in courtyard_startup
        gateway = ctx.state[Gateway]  # in a route or hook; typed as Gateway

    The class is the key, so a type checker knows what each lookup returns, and a plugin
    declares no keys of its own. Each context has its own `PluginState`: it lives and dies
    with its generation (a reload makes new contexts, so it starts empty), and two plugins
    never see each other's.
    """

    __slots__ = ("_owner", "_values")

    def __init__(self, owner: str = "") -> None:
        """:param owner: the plugin's name, for error messages."""
        self._owner = owner
        self._values: dict[type, object] = {}

    def __getitem__(self, kind: type[_T]) -> _T:
        """The object stored under `kind`.

        :raises KeyError: when none is (the hook that stores it has not run, or failed).
        """
        value = self._values.get(kind, _ABSENT)
        if value is _ABSENT:
            raise self._missing(kind)
        return cast(_T, value)  # stored by __setitem__ or setdefault: checked a `kind`

    def __setitem__(self, kind: type[_T], value: _T) -> None:
        """Store `value` under `kind`, replacing what was there.

        :raises TypeError: when `kind` is not a class, or `value` is not an instance of it.
        """
        self._values[kind] = _checked(kind, value)

    def __delitem__(self, kind: type) -> None:
        """Forget the object stored under `kind`.

        :raises KeyError: when none is.
        """
        if self._values.pop(kind, _ABSENT) is _ABSENT:
            raise self._missing(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        kinds = ", ".join(_name(kind) for kind in self._values)
        return f"<PluginState of {self._owner or '?'}: {kinds or 'empty'}>"

    @overload
    def get(self, kind: type[_T]) -> _T | None: ...
    @overload
    def get(self, kind: type[_T], default: _D) -> _T | _D: ...
    def get(self, kind: type[_T], default: Any = None) -> Any:
        """The object stored under `kind`, or `default` when there is none."""
        return self._values.get(kind, default)

    def setdefault(self, kind: type[_T], default: _T) -> _T:
        """The object stored under `kind`; when there is none, store `default` and return
        it.

        :raises TypeError: as `ctx.state[kind] = default` would.
        """
        # What is stored under `kind` was checked to be one.
        return cast(_T, self._values.setdefault(kind, _checked(kind, default)))

    @overload
    def pop(self, kind: type[_T]) -> _T: ...
    @overload
    def pop(self, kind: type[_T], default: _D) -> _T | _D: ...
    def pop(self, kind: type[_T], default: Any = _ABSENT) -> Any:
        """Remove and return the object stored under `kind` (in `courtyard_shutdown`, so
        that a request still in flight no longer finds it), or return `default`.

        :raises KeyError: when there is none and no `default` is given.
        """
        value = self._values.pop(kind, default)
        if value is _ABSENT:
            raise self._missing(kind)
        return value

    def _missing(self, kind: object) -> KeyError:
        return KeyError(
            f"plugin {self._owner} has no {_name(kind)} in ctx.state: store one first "
            f"(ctx.state[{_name(kind)}] = ..., in courtyard_startup for example)"
        )


def _checked(kind: type[_T], value: _T) -> _T:
    if not isinstance(kind, type):
        raise TypeError(f"ctx.state is keyed by classes, not by {kind!r}")
    if not isinstance(value, kind):
        raise TypeError(
            f"ctx.state[{_name(kind)}] must be a {_name(kind)}, got {type(value).__name__}"
        )
    return value


def _name(kind: object) -> str:
    return getattr(kind, "__qualname__", None) or repr(kind)


@dataclass(frozen=True, eq=False)
class PluginContext:
    """What the runtime hands one plugin: its identity, settings and neighbours.

    :ivar name: the plugin's name, as in its manifest.
    :ivar manifest: the parsed `plugin.toml`.
    :ivar settings: the plugin's validated settings (`[plugins."<name>"]` plus defaults).
    :ivar logger: a logger named `courtyard.plugin.<name>`.
    :ivar root: the folder holding `plugin.toml`.
    :ivar db: the database (`async with ctx.db.session() as session:`).
    :ivar events: the event bus (`await ctx.events.publish(topic, data)`).
    :ivar audit: the audit log (`await ctx.audit.record(action, target=...)`).
    :ivar plugins: the plugins of the serving generation, read-only (`ctx.plugins.list()`,
        `ctx.plugins.get(name)`): see `courtyard_sdk.plugins`.
    :ivar state: the plugin's objects for this generation, keyed by class
        (`ctx.state[Gateway] = gateway`, then `ctx.state[Gateway]`): see `PluginState`.
    """

    name: str
    manifest: Manifest
    settings: Mapping[str, Any]
    logger: logging.Logger
    root: Path
    _data_dir: Path = field(repr=False)
    _lookup: Callable[[str], Any] = field(repr=False, default=lambda name: None)
    db: Database = field(repr=False, default=_Missing("database"))
    events: EventBus = field(repr=False, default=_Missing("event bus"))
    audit: AuditLog = field(repr=False, default=_Missing("audit log"))
    plugins: PluginDirectory = field(repr=False, default=_Missing("plugin directory"))
    state: PluginState = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A field of its own, made here rather than by a default factory, to know its
        # owner's name; the class is frozen, hence object.__setattr__.
        object.__setattr__(self, "state", PluginState(self.name))

    @property
    def data_dir(self) -> Path:
        """A folder of the plugin's own under the runtime's data directory, created on
        first use (so that merely listing plugins writes nothing)."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    def get_plugin(self, name: str) -> Any:
        """Return the service that plugin `name` provides (see `courtyard_provides`).

        `name` must be one of this plugin's `dependencies` or `optional_dependencies`, so
        that it is always started first. An optional dependency that is not loaded gives
        None.

        :raises LookupError: when `name` is not a declared dependency.
        """
        if name not in self.manifest.all_dependencies:
            raise LookupError(
                f"plugin {self.name} asked for {name!r}, which is not among its dependencies "
                "or optional_dependencies in plugin.toml"
            )
        return self._lookup(name)
