"""The queue configurations in force: the configured YAML files plus the ones created
through the API, all kept in the task store so that every instance sharing it sees them.

A name belongs to a file or to the API: files are read at startup and by a reload, which
writes their queues to the store (a file's queue replaces an API one of the same name,
with a warning) and removes the queues of files that no longer define them; a file that
cannot be read keeps its previous queues. Each instance caches the configurations and
looks at the store's version at most once a second, so a change made on another
instance shows within a second; one made here shows at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, FileSet, QueueConfig, load_files, parse_queue, split_name
from .store import StoredConfig, TaskStore

API = "api"


@dataclass(frozen=True)
class Entry:
    """A configuration in force and where it came from (`api` or a file's path)."""

    config: QueueConfig
    source: str


@dataclass
class Reload:
    """What a reload did: the queues it (re)loaded, and what went wrong."""

    reloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timestamp: int = 0


class ConfigConflict(Exception):
    """An API change of a queue that a file defines, or a create of an existing name."""


class Registry:
    """See the module docstring."""

    def __init__(
        self,
        store: TaskStore,
        paths: list[str],
        logger: logging.Logger,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.paths = paths
        self.log = logger
        self.refresh_seconds = refresh_seconds
        self._entries: dict[str, Entry] = {}
        self._version: int | None = None
        self._checked = float("-inf")

    async def load_files(self) -> Reload:
        """Read the files and write their queues to the store (see the module docstring)."""
        files: FileSet = load_files(self.paths)
        report = Reload(errors=list(files.errors), warnings=list(files.warnings))
        stored = {c.name: c for c in await self.store.configs()}
        for name, (config, source) in files.queues.items():
            previous = stored.get(name)
            if previous is not None and previous.source == API:
                report.warnings.append(
                    f"{source}: queues.{name}: replaces the configuration created through the API"
                )
            document = config.document()
            if previous is None or (previous.source, previous.document) != (source, document):
                await self.store.put_config(StoredConfig(name, source, document))
            report.reloaded.append(name)
        for name, previous in stored.items():
            if previous.source == API or name in files.queues or previous.source in files.failed:
                continue
            if Path(previous.source).exists() and previous.source not in files.files:
                continue  # a file of another configuration (not among ours): not ours to drop
            await self.store.delete_config(name)
            report.removed.append(name)
        for problem in report.errors:
            self.log.error("queue configuration: %s", problem)
        for warning in report.warnings:
            self.log.warning("queue configuration: %s", warning)
        report.timestamp = int(time.time())
        self._checked = float("-inf")
        return report

    async def entries(self) -> dict[str, Entry]:
        """Every configuration in force, by queue name (refreshed as the docstring says)."""
        moment = time.monotonic()
        if moment - self._checked >= self.refresh_seconds:
            self._checked = moment
            version = await self.store.config_version()
            if version != self._version:
                self._entries = await self._read()
                self._version = version
        return self._entries

    async def _read(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for stored in await self.store.configs():
            try:
                config = parse_queue(stored.name, stored.document, stored.source)
            except ConfigError as exc:
                self.log.error("stored queue configuration ignored: %s", exc)
                continue
            entries[stored.name] = Entry(config, stored.source)
        return entries

    async def get(self, name: str) -> Entry | None:
        """The configuration of queue `name` (the parent, without a sub-queue)."""
        return (await self.entries()).get(name)

    async def sub_queue(self, full: str) -> Entry | None:
        """The configuration owning sub-queue `full` (`inference.high`), if it has it."""
        parent, sub = split_name(full)
        entry = await self.get(parent)
        if entry is None or sub is None or full not in entry.config.full_names:
            return None
        return entry

    async def create(self, config: QueueConfig, force: bool) -> bool:
        """Store an API configuration. :return: True when it replaced one.

        :raises ConfigConflict: the name is a file's, or exists and `force` is false.
        """
        existing = await self._fresh(config.name)
        if existing is not None and existing.source != API:
            raise ConfigConflict(
                f"queue '{config.name}' is defined in {existing.source}: change it there and reload"
            )
        if existing is not None and not force:
            raise ConfigConflict(
                f"queue '{config.name}' already exists. Use force=true to update it"
            )
        await self.store.put_config(StoredConfig(config.name, API, config.document()))
        self._checked = float("-inf")
        return existing is not None

    async def remove(self, name: str) -> bool:
        """Delete an API configuration. :return: False when there is none.

        :raises ConfigConflict: the name is a file's.
        """
        existing = await self._fresh(name)
        if existing is None:
            return False
        if existing.source != API:
            raise ConfigConflict(
                f"queue '{name}' is defined in {existing.source}: remove it there and reload"
            )
        await self.store.delete_config(name)
        self._checked = float("-inf")
        return True

    async def _fresh(self, name: str) -> Entry | None:
        self._checked = float("-inf")
        return await self.get(name)
