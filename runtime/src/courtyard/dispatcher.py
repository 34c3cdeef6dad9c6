"""The ASGI entry point: routes each request to the serving generation, swaps generations.

The HTTP server calls `Dispatcher`. A reload builds a new generation beside the serving
one and swaps the reference in one step; requests already running finish on the old
generation, whose shutdown hooks run once it is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from courtyard_sdk import ApiError
from courtyard_sdk.request_ids import REQUEST_ID
from courtyard_sdk.status import PluginStatus
from werkzeug.datastructures import Headers

from . import __version__
from .app import create_app
from .apps.registry import AppRegistry, app_folders
from .apps.router import AppRequest, AppRouter, pool_options
from .asgi import Receive, Scope, Send, header
from .core.uploads import limits
from .generation import BuildError, Generation
from .installs import accept_tree, clean_staging, install_tree, remove_tree, restore_tree
from .security import (
    STATE_CHANGING,
    HostAllowList,
    check_origin,
    misdirected,
    refuse,
    request_id_for,
)
from .services import Services
from .services.events import announce, end_streams
from .services.replication import Batch, Replicator, Status
from .services.store import APP, PLUGIN, RELOAD, Archive
from .settings import Settings

log = logging.getLogger("courtyard.dispatcher")


class Dispatcher:
    """Serves the current generation and manages its replacement.

    :ivar state: "starting" until the first generation serves, then "ready", then
        "stopping" once shutdown begins; "failed" if the first generation cannot be built.
    """

    def __init__(self, settings: Settings, *, explain_failures: bool = False) -> None:
        """:param explain_failures: a failed plugin's routes answer why it failed
        (`courtyard dev`)."""
        self.settings = settings
        self.explain_failures = explain_failures
        self.current: Generation | None = None
        self.state = "starting"
        self.startup_error: BaseException | None = None
        self.on_fatal: Callable[[], None] | None = None
        self._numbers = itertools.count(1)
        self._changes = asyncio.Lock()  # one reload (and its file changes) at a time
        self._retiring: set[asyncio.Task[None]] = set()
        self._boot: asyncio.Task[None] | None = None
        self.hosts = HostAllowList(settings.host, settings.allowed_hosts)
        self.apps = AppRouter(AppRegistry(settings.app_folders), pool_options(settings))
        self.services = Services(settings)
        self.replication = Replicator(
            self.services.store,
            self.services.events,
            settings.data_dir,
            limits(settings),
            on_changes=self._apply,
            status=self._status,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        host = header(scope, b"host")
        if not self.hosts.allows(host):  # before anything runs: DNS rebinding
            rid = request_id_for(header(scope, b"x-request-id"))
            await refuse(scope, send, misdirected(host), rid)
            return
        generation = self.current
        if generation is None:
            await self._unavailable(scope, send)
            return
        if (routed := self.app_for(scope)) is not None:
            await self._serve_app(routed, scope, receive, send)
            return
        generation.active += 1
        generation.idle.clear()
        try:
            # A serving generation has its Quart app; Quart types the scope and messages as
            # TypedDicts, which these dicts are.
            app = cast("Callable[..., Awaitable[None]]", generation.app)
            await app(scope, receive, send)
        finally:
            generation.active -= 1
            if generation.active == 0:
                generation.idle.set()

    def app_for(self, scope: Scope) -> AppRequest | None:
        """The app a request goes to, or None: core and plugin routes come first."""
        generation = self.current
        if generation is None:
            return None
        return self.apps.route(scope["path"], scope.get("method"), generation)

    async def _serve_app(
        self, routed: AppRequest, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Hand a request to its app, once it passes the Origin check (apps see no
        runtime credential, so every state change and handshake is checked)."""
        rid = request_id_for(header(scope, b"x-request-id"))
        if scope["type"] == "websocket" or scope["method"] in STATE_CHANGING:
            headers = Headers(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
            )
            scheme = scope.get("scheme", "http")
            try:
                # Apps answer programs too: a request without Origin is not a browser's.
                check_origin(scheme, headers.get("Host", ""), headers, may_omit=True)
            except ApiError as refusal:
                await refuse(scope, send, refusal, rid)
                return
        # The router adds the id to every answer itself: no `send` wrapper on the way.
        await self.apps.serve(routed, scope, receive, send, ((b"x-request-id", rid.encode()),))

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Generation:
        """Build and serve the first generation.

        :raises BuildError: when it cannot be built (in strict mode: any plugin failure),
            or when it would serve beyond loopback with no way to authenticate (see
            services/exposure.py).
        """
        for folder in self.settings.plugin_folders:
            clean_staging(folder)
        for folder in self.settings.app_folders:
            clean_staging(folder)  # upload staging
            for _, app_folder in app_folders(folder):
                clean_staging(app_folder)  # backups of versions being overwritten
        try:
            await self.services.start()
            # What the other instances installed, before the first generation builds.
            await self.replication.catch_up()
            synced = await self._sync(PLUGIN) + await self._sync(APP)
            log.info(
                "instance %s at revision %d of the shared store%s",
                self.replication.instance,
                self.replication.applied,
                f", {len(synced)} install(s) brought up to date" if synced else "",
            )
            # Everything loaded so far (the libraries, the services and their connections)
            # lives as long as the process: spare the garbage collector from scanning it
            # again and again (Instagram's gc.freeze trick). Generations come later, so
            # retired ones stay collectable.
            gc.collect()
            gc.freeze()
            async with self._changes:
                # Checked before the generation serves: an open runtime never answers here.
                generation = await self._swap(
                    accept=lambda g: self.services.auth.exposure_refusal(g.credentials)
                )
            await self.replication.follow()
            return generation
        except BaseException as exc:
            self.state, self.startup_error = "failed", exc
            raise

    async def reload(self) -> Generation:
        """Build a new generation and swap it in; the old one retires once idle. The other
        instances reload too.

        :raises BuildError: the new generation could not be built; the old one serves on.
        """
        async with self._changes:
            generation = await self._swap()
        await self.replication.announce(RELOAD)
        return generation

    async def install_plugin(
        self, name: str, content: Path, plugin_dir: Path, archive: Archive
    ) -> Generation:
        """Put plugin `name`'s files (`content`, a prepared folder in `plugin_dir`, the
        first plugin directory) in place and serve a generation in which it loads; if it
        does not load, the previous files come back (or the new folder goes) and the
        serving generation stays. Once it serves, the shared store records `archive`, and
        the other instances serve it too.

        :raises BuildError: naming why the plugin did not load.
        """
        destination = plugin_dir / name

        def loads_it(generation: Generation) -> str | None:
            rec = next((r for r in generation.records if r.candidate.root == destination), None)
            if rec is None:
                return f"{name}: not found after install"
            return f"{name}: {rec.error}" if rec.status == PluginStatus.FAILED else None

        async with self._changes, self.replication.lock(PLUGIN):
            journal = install_tree(content, destination)
            try:
                generation = await self._swap(accept=loads_it)
            except BuildError:
                restore_tree(journal, destination)
                raise
            try:
                revision = await self.services.store.install(PLUGIN, name, archive, exclusive=False)
            except BaseException:
                # What the store does not hold, no instance serves: this one neither.
                restore_tree(journal, destination)
                with contextlib.suppress(BuildError):
                    await self._swap()
                raise
            self.replication.marked(PLUGIN, name, archive.sha256)
        # Until here a crash restores the previous files at start-up (installs.py), and
        # the store's version comes back (`start`).
        await asyncio.to_thread(accept_tree, journal)
        await self.replication.settle(revision)
        return generation

    async def remove_plugin(self, root: Path) -> Generation:
        """Delete a directory plugin's folder and serve a generation without it; the
        store forgets it first, so that no instance brings it back.

        :raises BuildError: the files are gone, but the new generation failed to build;
            the old one serves on.
        """
        folders = self.settings.plugin_folders
        async with self._changes, self.replication.lock(PLUGIN):
            revision = await self.replication.record_removal(PLUGIN, root, folders)
            remove_tree(root)
            generation = await self._swap()
        await self.replication.settle(revision)
        return generation

    async def _sync(self, kind: str) -> list[str]:
        """Make the first folder of `kind` hold what the store holds (services/replication.py).

        :return: the paths changed.
        """
        folders = self.settings.plugin_folders if kind == PLUGIN else self.settings.app_folders
        if not folders:
            return []
        async with self.replication.lock(kind):
            return await self.replication.sync_folder(kind, folders[0])

    def _status(self) -> Status:
        """How this instance serves, for its reports to the other instances."""
        generation = self.current
        if generation is None:
            return Status(self.state, 0, {}, [])
        entry_points = {
            r.name: r.candidate.manifest.version
            for r in generation.loaded
            if r.candidate.source == "entry point" and r.candidate.manifest is not None
        }
        failed = [r.name for r in generation.failed]
        return Status(self.state, generation.number, entry_points, failed)

    async def _apply(self, batch: Batch) -> None:
        """Apply the other instances' changes (the replicator's `on_changes`)."""
        if batch.plugins:
            async with self._changes:
                await self._sync(PLUGIN)
                try:
                    await self._swap()
                except BuildError as exc:
                    log.error("the plugins as another instance changed them fail here: %s", exc)
        if batch.apps:
            async with self.apps.changes:
                await self._sync(APP)
                self.apps.registry.invalidate()
                await self.apps.stop_paths(batch.apps)  # fresh workers for new code
        if batch.keys:
            self.services.auth.keys_changed()

    async def _swap(self, accept: Callable[[Generation], str | None] | None = None) -> Generation:
        """Build a generation from the plugin files and serve it (hold `_changes`).

        :param accept: looks at the built generation before it serves and returns why it
            must not (or None); an upload uses it so that a plugin that fails to load
            never replaces the one serving.
        :raises BuildError: the new generation could not be built or was not accepted;
            the old one serves on.
        """
        assert self._changes.locked(), "hold _changes around _swap()"
        generation = Generation(
            next(self._numbers), self.settings, self.services, first=self.current is None
        )
        try:
            # In a context of its own (with the request id, for the log): what a build
            # leaves scheduled (its startup timeouts, cancelled but kept until they would
            # have expired) would otherwise hold the request that asked for it, and so the
            # generation serving that request, alive long after it retired.
            context = contextvars.Context()
            context.run(REQUEST_ID.set, REQUEST_ID.get())
            await asyncio.create_task(self._build(generation), context=context)
            if accept is not None and (refusal := accept(generation)) is not None:
                await generation.shutdown()
                raise BuildError(refusal)
        except BuildError as exc:
            failure = {"generation": generation.number, "error": str(exc)}
            await announce(self.services.events, "courtyard.generation.failed", failure)
            raise
        old, self.current = self.current, generation
        if self.state == "starting":
            self.state = "ready"
        log.info(
            "generation %d serving %d plugin(s)%s",
            generation.number,
            len(generation.loaded),
            "" if old is None else f", generation {old.number} retiring",
        )
        await _announce_serving(self.services.events, generation)
        if old is not None:
            end_streams(old.app)  # their clients reconnect, to this generation
            # A fresh context: a copy of the reload request's would keep that request, its
            # app and so the old generation alive.
            task = asyncio.create_task(self._retire(old), context=contextvars.Context())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return generation

    async def _build(self, generation: Generation) -> None:
        await generation.build()
        await self._assemble(generation)

    async def _assemble(self, generation: Generation) -> None:
        """Give a built generation its app and start it: one containment with the build
        (a missing docs script is a build error like a failing plugin).

        :raises BuildError: the generation's plugins are shut down first.
        """
        try:
            generation.app = create_app(self, generation, explain_failures=self.explain_failures)
            await generation.app.startup()
        except Exception as exc:
            await generation.shutdown()
            raise BuildError(f"generation {generation.number}: {exc}") from exc

    async def _retire(self, generation: Generation) -> None:
        try:
            await asyncio.wait_for(generation.idle.wait(), self.settings.drain_timeout)
        except TimeoutError:
            log.warning(
                "generation %d still had %d request(s) after %g s; shutting it down",
                generation.number,
                generation.active,
                self.settings.drain_timeout,
            )
        await generation.shutdown()

    def begin_shutdown(self) -> None:
        """Mark the runtime as stopping, so readiness probes answer 503 at once."""
        if self.state != "failed":
            self.state = "stopping"
        if self.current is not None:
            end_streams(self.current.app)  # else open event streams would hold the shutdown

    async def close(self) -> None:
        """Stop: finish booting, retire every generation, run every shutdown hook once."""
        self.begin_shutdown()
        if self._boot is not None:
            await asyncio.gather(self._boot, return_exceptions=True)
        await self.replication.close()
        async with self._changes:
            generation, self.current = self.current, None
        if generation is not None:
            await self._retire(generation)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.apps.close()
        await self.services.close()

    async def _boot_in_background(self) -> None:
        try:
            await self.start()
        except Exception as exc:
            log.critical("courtyard cannot start: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Build in the background: /api/health/live answers while plugins start.
                self._boot = asyncio.create_task(self._boot_in_background())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _unavailable(self, scope: Scope, send: Send) -> None:
        """Answer while no generation serves (starting, stopping or failed)."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
            return
        path = scope.get("path", "")
        status: int
        body: dict[str, Any]
        if path == "/api/health/live":
            status, body = 200, {"ok": True, "status": "live", "version": __version__}
        elif path in ("/api/health/", "/api/health/ready"):
            status, body = 503, {"ok": False, "status": self.state, "version": __version__}
        else:
            message = f"Courtyard is {self.state}; try again shortly"
            status, body = 503, {"error": {"code": "NOT_READY", "message": message}}
        rid = request_id_for(header(scope, b"x-request-id"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", b"1"),
                    (b"x-request-id", rid.encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _announce_serving(bus: Any, generation: Generation) -> None:
    """`courtyard.plugin.failed` for each plugin the generation excluded, then
    `courtyard.generation.serving`."""
    failed = [{"name": r.name, "error": r.error} for r in generation.failed]
    for plugin in failed:
        await announce(bus, "courtyard.plugin.failed", {"generation": generation.number, **plugin})
    await announce(
        bus,
        "courtyard.generation.serving",
        {
            "generation": generation.number,
            "plugins": [r.name for r in generation.loaded],
            "failed": failed,
        },
    )


__all__ = ["BuildError", "Dispatcher"]
