"""Every instance serving what the shared store holds (services/store.py).

One `Replicator` per process. The process that makes a change records it in the store and
then `settle`s: it wakes the others through the event bus and waits, a few seconds at
most, until every live instance reports having applied it. Each process follows the log:
woken by the bus, or every `POLL_INTERVAL` seconds without it (the bus may have been
down, a process may have missed the wake-up: the log, not the event, is the truth). A
batch of changes from other processes is handed to `on_changes`, which the dispatcher
implements: it makes the folders match the store (`sync_folder`, under its own locks),
reloads the plugins, forgets the apps it served, refreshes what it knows of the keys.

A folder the store manages has a marker with its archive's address (`<data_dir>/
installed/<kind>/<path>`): markers tell an up-to-date folder from one to rewrite, and
folders without one (put there by hand) from folders the store removes. The processes of
one machine share their data and folders (`courtyard serve --workers N`): a file lock
beside the markers (`Replicator.lock`) keeps two of them from writing at once.

Each process reports itself (`courtyard_instances`) every `HEARTBEAT` seconds: its
state, generation and applied revision, which `/api/cluster/` and `courtyard status` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import io
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..archives import Limits, extract, flatten_root
from ..installs import accept_tree, install_tree, remove_path, remove_tree, staging_dir
from .events import announce
from .store import APP, KEYS, PLUGIN, RELOAD, Archive, Instance, Store, now

log = logging.getLogger("courtyard.replication")

# Seconds between two looks at the log without a wake-up (the bus wakes the followers at
# once; this is for a wake-up missed), and between two reports of this instance: each is
# a query or a write that serving pays for.
POLL_INTERVAL = 1.0
HEARTBEAT = 2.0
# An instance not seen for this long is not waited for: long enough that a busy instance
# late with its report is still waited for (a killed one costs a change SETTLE_TIMEOUT).
LIVE_WITHIN = 5 * HEARTBEAT
SETTLE_TIMEOUT = 5.0  # seconds a change waits for the others to apply it
WAKE_TOPIC = "courtyard.store.changed"


@dataclass
class Batch:
    """What changes from other instances ask of this one."""

    plugins: bool = False  # plugin folders to sync, and a reload
    apps: set[str] = field(default_factory=set)  # app paths installed or removed
    keys: bool = False  # keys made or revoked


@dataclass(frozen=True)
class Status:
    """How this instance serves, as it reports it."""

    state: str  # the dispatcher's: starting, ready, stopping, failed
    generation: int  # the serving generation's number (0 before the first)
    entry_points: dict[str, str]  # the plugins of installed distributions: name -> version
    failed: list[str]  # the plugins the serving generation excluded


def instance_id(configured: str | None) -> str:
    """This process's id: the `instance_id` setting (which the supervisor of several
    server processes makes one per process), `<hostname>-<pid>` by default."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


class Replicator:
    """Follows and feeds the store for this process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        events: Any,
        data_dir: Path,
        limits: Limits,
        on_changes: Callable[[Batch], Awaitable[None]],
        status: Callable[[], Status],
    ) -> None:
        """:param events: the event bus, for wake-ups.
        :param limits: what an archive may hold when it is unpacked here again.
        :param on_changes: applies a batch of other instances' changes (the dispatcher).
        :param status: how this instance serves, for its reports.
        """
        self.store = store
        self.events = events
        self.limits = limits
        self.markers = data_dir / "installed"
        self.on_changes = on_changes
        self.status = status
        self.applied = 0  # every change up to this revision is applied here
        self._started_at = now()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def instance(self) -> str:
        """This instance's id."""
        return self.store.instance

    # Start and stop ----------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Before the first generation: take the store's head as applied (the caller
        then brings its folders up to date, and then `follow`s)."""
        self.applied = await self.store.head()

    async def follow(self) -> None:
        """Report this instance, then follow the log and report it every `HEARTBEAT`.

        The first report is awaited: until it is in the store, a change made elsewhere
        does not wait for this instance, which would then serve it up to `POLL_INTERVAL`
        late although the change's answer said every instance had it.
        """
        try:
            await self._report()
        except Exception as exc:  # the heartbeat tries again
            log.warning("cannot report this instance to the store: %s", exc)
        # Fresh contexts: a copy of the caller's would keep what its context variables
        # hold (the first generation, set while it started) alive as long as the tasks.
        self._tasks = [
            asyncio.create_task(work, name=f"courtyard-{name}", context=contextvars.Context())
            for name, work in (
                ("follow", self._follow()),
                ("heartbeat", self._heartbeat()),
                ("wake", self._listen()),
            )
        ]

    async def close(self) -> None:
        """Stop following, and leave: the others stop waiting for this instance."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.store.leave(self.instance)

    # Recording changes -------------------------------------------------------------------

    async def settle(self, revision: int) -> None:
        """After recording `revision`: wake the others and wait (SETTLE_TIMEOUT at most)
        until every live instance has applied it."""
        await announce(self.events, WAKE_TOPIC, {"revision": revision})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        while True:
            try:
                peers = await self.store.instances(LIVE_WITHIN)
            except Exception as exc:  # the change is recorded; the others will follow
                log.warning("cannot see the other instances: %s", exc)
                return
            behind = [i.id for i in peers if i.id != self.instance and i.revision < revision]
            if not behind:
                return
            if loop.time() >= deadline:
                log.warning(
                    "revision %d not yet applied by %s after %g s",
                    revision,
                    ", ".join(behind),
                    SETTLE_TIMEOUT,
                )
                return
            await asyncio.sleep(0.05)

    async def announce(self, kind: str, path: str | None = None) -> None:
        """Tell the other instances to do what this one did (a reload, keys changed, a
        change in a folder the store does not manage), and settle. A failure is logged:
        this instance's change is done, and the others catch up at their next change."""
        try:
            revision = await self.store.announce(kind, path)
        except Exception as exc:
            log.warning("cannot tell the other instances of a %s change: %s", kind, exc)
            return
        await self.settle(revision)

    async def record_removal(self, kind: str, root: Path, folders: tuple[Path, ...]) -> int:
        """Before `root` (in one of the `kind` folders) is removed: the store forgets it
        if it is in the first folder, the one the store manages; else the removal is only
        announced. Settle the revision returned once it is done."""
        for folder in folders:
            if folder.resolve() in root.resolve().parents:
                path = root.resolve().relative_to(folder.resolve()).as_posix()
                if folder != folders[0]:
                    return await self.store.announce(kind, path)
                revision = await self.store.remove(kind, path)
                self.unmarked(kind, path)
                return revision
        return await self.store.announce(kind)

    # Folders -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, kind: str) -> AsyncIterator[None]:
        """Hold the lock on the folder of `kind` against the other processes sharing it
        (polled, so that a cancelled wait leaves no lock behind)."""
        self.markers.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.markers / f".{kind}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def marked(self, kind: str, path: str, sha256: str) -> None:
        """Record that `path` (in the first `kind` folder) holds archive `sha256`."""
        folder = self.markers / kind
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / quote(path, safe="")
        temporary = marker.with_name(f".{marker.name}.tmp")
        temporary.write_text(sha256)
        temporary.replace(marker)

    def unmarked(self, kind: str, path: str) -> None:
        """Forget the markers of `path` and of what is inside it."""
        for found in self._marks(kind):
            if found == path or found.startswith(path + "/"):
                (self.markers / kind / quote(found, safe="")).unlink(missing_ok=True)

    def _marks(self, kind: str) -> dict[str, str]:
        folder = self.markers / kind
        if not folder.is_dir():
            return {}
        return {
            unquote(m.name): m.read_text().strip()
            for m in folder.iterdir()
            if not m.name.startswith(".")
        }

    async def sync_folder(self, kind: str, root: Path) -> list[str]:
        """Make `root` hold what the store holds of `kind`: unpack what is missing or
        outdated, remove what the store no longer has (only folders it put there).
        Hold `lock(kind)` and the caller's own lock for `kind`.

        :return: the paths changed.
        """
        wanted = await self.store.installs(kind)
        have = await asyncio.to_thread(self._marks, kind)
        changed = []
        for path, sha in sorted(wanted.items()):
            if have.get(path) == sha and (root / path).exists():
                continue
            archive = await self.store.archive(sha)
            if archive is None:  # replaced meanwhile: a later change brings the new one
                continue
            try:
                await asyncio.to_thread(self._unpack, archive, root, path)
            except Exception as exc:  # it was checked at upload: this machine differs
                log.error("cannot unpack %s %s from the store: %s", kind, path, exc)
                continue
            self.marked(kind, path, sha)
            changed.append(path)
        for path in sorted(set(have) - set(wanted)):
            await asyncio.to_thread(_remove, root, path)
            self.unmarked(kind, path)
            changed.append(path)
        return changed

    def _unpack(self, archive: Archive, root: Path, path: str) -> None:
        destination = root / path
        staging = staging_dir(destination.parent)
        try:
            tree = staging / "tree"
            tree.mkdir()
            extract(io.BytesIO(archive.content), archive.kind, tree, self.limits)
            accept_tree(install_tree(flatten_root(tree), destination))
        finally:
            remove_path(staging)

    # Following ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake the follower on other instances' announcements (a shortcut only)."""
        while True:
            try:
                async with self.events.subscribe(WAKE_TOPIC) as subscription:
                    async for _ in subscription:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # a lagged or broken subscription: polling goes on
                pass
            await asyncio.sleep(POLL_INTERVAL)

    async def _follow(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation
            # that comes as the wake-up does, and `close` would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.apply_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot follow the store: %s: %s", type(exc).__name__, exc)

    async def apply_pending(self) -> None:
        """Apply the changes other instances logged since `applied`."""
        changes, complete = await self.store.changes_after(self.applied)
        if not changes:
            return
        batch = Batch()
        if not complete:  # pruned past us: everything may have changed
            batch.plugins = batch.keys = True
        for change in changes:
            if change.instance == self.instance:
                continue  # applied when it was made
            if change.kind in (PLUGIN, RELOAD):
                batch.plugins = True
            elif change.kind == APP and change.path is not None:
                batch.apps.add(change.path)
            elif change.kind == KEYS:
                batch.keys = True
        if batch.plugins or batch.apps or batch.keys:
            await self.on_changes(batch)
        self.applied = changes[-1].revision
        await self._report()

    async def _heartbeat(self) -> None:
        for beat in itertools.count():
            with contextlib.suppress(Exception):
                await self._report()
                if beat % 1800 == 0:  # at the start, then about once an hour
                    await self.store.forget_gone()
            await asyncio.sleep(HEARTBEAT)

    async def _report(self) -> None:
        status = self.status()
        await self.store.report(
            Instance(
                id=self.instance,
                host=socket.gethostname(),
                pid=os.getpid(),
                state=status.state,
                generation=status.generation,
                entry_points=status.entry_points,
                failed=status.failed,
                revision=self.applied,
                started_at=self._started_at,
                seen_at=now(),
            )
        )


def _remove(root: Path, path: str) -> None:
    """Remove `root/path`, and the app folder it leaves empty."""
    remove_tree(root / path)
    parent = (root / path).parent
    if parent == root or parent.name.startswith("@") or not parent.is_dir():
        return
    if not any(p for p in parent.iterdir() if not p.name.startswith(".")):
        remove_tree(parent)
