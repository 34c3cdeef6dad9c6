"""The context each plugin's hooks receive."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import Manifest
from .services import AuditLog, Database, EventBus


class _Missing:
    """Stands in for a service in a context the runtime did not make (a bare unit test)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this PluginContext has no {self._service}: only a running Courtyard provides "
            "one (in tests, use the `courtyard` fixture of courtyard_sdk.testing)"
        )


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
    """

    name: str
    manifest: Manifest
    settings: Mapping[str, Any]
    logger: logging.Logger
    root: Path
    _data_dir: Path = field(repr=False)
    _lookup: Callable[[str], Any] = field(repr=False, default=lambda name: None)
    db: Database = field(repr=False, default=_Missing("database"))  # type: ignore[assignment]
    events: EventBus = field(repr=False, default=_Missing("event bus"))  # type: ignore[assignment]
    audit: AuditLog = field(repr=False, default=_Missing("audit log"))  # type: ignore[assignment]

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
