"""A generation: one immutable, fully built Quart app and the plugins it serves.

The runtime never changes a serving app. A reload builds a new generation from the plugin
set on disk (new plugin manager, new imports, startup hooks) and swaps it in whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courtyard_sdk import Blueprint, PluginContext, SettingsError, StartupError
from courtyard_sdk.names import slug
from courtyard_sdk.plugins import PluginInfo
from courtyard_sdk.status import PluginStatus
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Rule

from . import loading
from .discovery import Candidate, scan
from .hooks import Failure, Hooks
from .ordering import dependency_order, dependents_of
from .routes import PluginRoutes, collisions
from .services.credentials import NO_CREDENTIALS, CredentialSet
from .services.database import MigrationError
from .settings import Settings

if TYPE_CHECKING:
    from quart import Quart

    from .services import Services

log = logging.getLogger("courtyard.generation")

# Short names for the statuses a generation gives (the CLI imports them from here).
LOADED, FAILED, DISABLED = PluginStatus.LOADED, PluginStatus.FAILED, PluginStatus.DISABLED


class BuildError(StartupError):
    """A generation could not be built; the serving one (if any) stays. At start-up it
    is the SDK's `StartupError`, so plugin tests can expect it without the runtime."""


@dataclass(eq=False)
class PluginRecord:
    """One discovered plugin's fate in a generation."""

    candidate: Candidate
    status: PluginStatus = LOADED
    error: str | None = None
    module: types.ModuleType | None = None
    ctx: PluginContext | None = None
    service: Any = None
    blueprints: list[Blueprint] = field(default_factory=list)
    started: bool = False
    import_seconds: float = 0.0

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.candidate.name

    def fail(self, reason: str, exc: BaseException | None = None) -> None:
        """Exclude this plugin for `reason`, and log it (jupyter_server's wording), with
        the traceback of `exc`, the exception that caused it, if any. `error` keeps the
        one-line reason that the API shows."""
        self.status, self.error = FAILED, reason
        log.error("%s | plugin failed loading with message: %s", self.name, reason, exc_info=exc)


def route_heads(rules: Iterable[Rule]) -> frozenset[str]:
    """The first path segments of `rules` (`api` for `/api/health/`, `` for `/`), so that a
    path whose first segment is none of them is known to match no rule; empty when a rule
    starts with a variable (`/<name>`), which may match any first segment."""
    heads = set()
    for rule in rules:
        head = rule.rule.split("/", 2)[1] if rule.rule.startswith("/") else "<"
        if "<" in head:
            return frozenset()
        heads.add(head)
    return frozenset(heads)


class Generation:
    """A built, immutable set of plugins and the Quart app that serves them."""

    def __init__(
        self, number: int, settings: Settings, services: Services, *, first: bool = False
    ) -> None:
        """:param services: the runtime's services, handed to each plugin's context.
        :param first: the runtime's first generation, where bad plugin settings are an
        operator's mistake that refuses the start rather than excluding a plugin."""
        self.number = number
        self.settings = settings
        self.services = services
        self.first = first
        # The plugin manager, and every way of calling the plugins' hooks (hooks.py).
        self.hooks = Hooks(trace=settings.trace_hooks)
        self.records: list[PluginRecord] = []
        self.app: Quart | None = None
        self._route_heads: frozenset[str] | None = None  # see `route_heads`
        self.active = 0  # requests in flight on this generation
        self.idle = asyncio.Event()
        self.idle.set()
        # The loaded plugins' active `[[credentials]]`, accepted by the auth service.
        self.credentials: CredentialSet = NO_CREDENTIALS

    @property
    def loaded(self) -> list[PluginRecord]:
        """Loaded plugins in dependency order."""
        return [r for r in self.records if r.status == LOADED]

    @property
    def failed(self) -> list[PluginRecord]:
        """Excluded plugins."""
        return [r for r in self.records if r.status == FAILED]

    def hooks_of(self, rec: PluginRecord) -> list[str]:
        """The hooks `rec` implements."""
        return self.hooks.implemented_by(rec)

    def record(self, name: str) -> PluginRecord | None:
        """The loaded plugin called `name`, if any."""
        return next((r for r in self.loaded if r.name == name), None)

    def serves(self, path: str, method: str | None) -> bool:
        """Whether a core or plugin route answers `path` (apps come after routes)."""
        assert self.app is not None
        heads = self._route_heads
        if heads is None:
            heads = self._route_heads = route_heads(self.app.url_map.iter_rules())
        # Most app paths share no first segment with any route: no need to match them.
        head = path.split("/", 2)[1] if path.startswith("/") else ""
        if heads and head and head not in heads:
            return False
        try:
            self.app.url_map.bind("courtyard").match(path, method or "GET")
        except NotFound:
            return False
        except HTTPException:  # wrong method, or a redirect to the slashed path: still ours
            return True
        return True

    # Building ----------------------------------------------------------------------------

    async def build(self) -> None:
        """Discover, import, order, migrate and start plugins (the dispatcher assembles
        the app from them).

        :raises BuildError: in strict mode when any plugin fails, or for any unexpected
            failure. Plugins already started are shut down first.
        """
        try:
            # Plugin imports and hook calls may be slow: keep them off the serving loop.
            await asyncio.to_thread(self.prepare)
            await asyncio.to_thread(self._collect_routes)
            self._exclude_collisions()
            self._check_strict()
            await self._migrate()
            self._collect_credentials()
            self._check_strict()
            await self._start()
            self._check_strict()
            self.credentials = self.credentials.only(r.name for r in self.loaded)
        except Exception as exc:
            await self.shutdown()
            if isinstance(exc, BuildError):
                raise
            raise BuildError(f"generation {self.number}: {exc}") from exc

    def prepare(self) -> None:
        """Discover, configure, order and import plugins; nothing is started."""
        self._discover()
        self._import()

    def _discover(self) -> None:
        for cand in scan(self.settings):
            rec = PluginRecord(cand)
            self.records.append(rec)
            if cand.shadowed_by is not None:  # an override, not a failure: strict mode allows it
                rec.status, rec.error = DISABLED, cand.shadow_note
            elif cand.manifest is None:
                rec.fail(cand.error or "invalid manifest")
        for rec in self.records:
            if rec.status == LOADED:
                self._configure(rec)
        for name in self.settings.plugins.keys() - {r.name for r in self.records}:
            log.warning("settings given for plugin %s, which is not installed", name)

    def _configure(self, rec: PluginRecord) -> None:
        manifest = rec.candidate.manifest
        assert manifest is not None
        values = dict(self.settings.plugins.get(rec.name, {}))
        enabled = values.pop("enabled", manifest.enabled)
        only = self.settings.only_plugins
        try:
            if not isinstance(enabled, bool):
                raise SettingsError(
                    f"plugin {rec.name}: invalid settings: enabled: must be true or false"
                )
            if not enabled or (only is not None and rec.name not in only):
                rec.status = DISABLED
                return
            settings = manifest.validate_settings(values)
        except SettingsError as exc:
            if self.first:
                raise BuildError(str(exc)) from None
            rec.fail(str(exc))
            return
        if unmet := loading.unmet_requirements(manifest):
            rec.fail(f"unmet requirements: {', '.join(unmet)}")
            return
        data_dir = self.settings.data_dir / "plugin-data" / slug(rec.name)
        rec.ctx = PluginContext(
            name=rec.name,
            manifest=manifest,
            settings=types.MappingProxyType(settings),
            logger=logging.getLogger(f"courtyard.plugin.{rec.name}"),
            _data_dir=data_dir,
            root=rec.candidate.root,
            _lookup=self._service,
            db=self.services.database,
            events=self.services.events,
            audit=self.services.audit.for_plugin(rec.name),
            plugins=_Directory(self),
        )

    def _service(self, name: str) -> Any:
        rec = self.record(name)
        return rec.service if rec is not None else None

    def _unavailable_dependencies(self) -> None:
        """Fail plugins whose required dependency is present but disabled or failed."""
        status = {r.name: r.status for r in self.records if r.candidate.shadowed_by is None}
        changed = True
        while changed:  # a failure can make another plugin's dependency unavailable
            changed = False
            for rec in self.loaded:
                manifest = rec.candidate.manifest
                assert manifest is not None  # discovery failed the plugins without one
                for dep in manifest.dependencies:
                    if status.get(dep, LOADED) != LOADED:
                        verb = "is disabled" if status[dep] == DISABLED else "failed"
                        rec.fail(f"dependency {dep} {verb}")
                        status[rec.name], changed = FAILED, True
                        break

    def _import(self) -> None:
        self._unavailable_dependencies()
        manifests = {
            r.name: r.candidate.manifest
            for r in self.records
            if r.status == LOADED and r.candidate.manifest is not None  # loaded: it has one
        }
        order, excluded = dependency_order(manifests)
        by_name = {r.name: r for r in self.records if r.status == LOADED}
        for name, reason in excluded.items():
            by_name[name].fail(reason)
        # Records follow dependency order from here on; the excluded keep discovery order.
        self.records = [by_name[n] for n in order] + [
            r for r in self.records if r.name not in order or r.status != LOADED
        ]
        for name in order:
            rec = by_name[name]
            failed = [d for d in manifests[name].dependencies if by_name[d].status != LOADED]
            if failed:
                rec.fail(f"dependency {failed[0]} failed")
                continue
            self._import_one(rec)

    def _import_one(self, rec: PluginRecord) -> None:
        manifest, cand = rec.candidate.manifest, rec.candidate
        assert manifest is not None and rec.ctx is not None
        started = time.perf_counter()
        try:
            if cand.module is not None:
                rec.module = loading.import_installed_plugin(cand.module)
            elif manifest.module is not None:
                rec.module = loading.import_directory_plugin(cand.root, manifest, self.number)
            else:
                rec.module = types.ModuleType(f"{manifest.name} (manifest only)")
            self.hooks.register(rec.module, rec.name)  # left unregistered if it raises
        except Exception as exc:
            rec.module = None
            rec.fail(f"import failed: {type(exc).__name__}: {exc}", exc)
            return
        finally:
            rec.import_seconds = time.perf_counter() - started
        log.debug("%s | imported in %.1f ms", rec.name, rec.import_seconds * 1000)
        try:
            rec.service = self.hooks.call(rec, "courtyard_provides")
        except Exception as exc:
            self._exclude(rec, Failure("courtyard_provides", exc).reason, exc)

    def _collect_routes(self) -> None:
        for outcome in self.hooks.each(self.loaded, "courtyard_routes", Blueprint):
            if outcome.failure is not None:
                failure = outcome.failure
                self._exclude(outcome.plugin, failure.reason, failure.error)
            else:
                outcome.plugin.blueprints = outcome.items

    def _exclude_collisions(self) -> None:
        """Exclude the later of two plugins claiming the same base, menu path or route."""
        claims: dict[str, str] = {}
        for rec in self.loaded:
            manifest = rec.candidate.manifest
            assert manifest is not None
            wanted = [("base", manifest.base)] + [
                ("menu path", p) for m in manifest.menus for p in m.paths()
            ]
            clash = next(
                ((kind, path) for kind, path in wanted if f"{kind} {path}" in claims), None
            )
            if clash:
                kind, path = clash
                self._exclude(
                    rec, f"{kind} {path} is already claimed by {claims[f'{kind} {path}']}"
                )
                continue
            for kind, path in wanted:
                claims[f"{kind} {path}"] = rec.name
        while True:  # each pass excludes one offender, so this ends
            found = collisions(self.plugin_routes())
            if not found:
                return
            plugin, reason = found[0]
            offender = self.record(plugin)
            assert offender is not None
            self._exclude(offender, reason)

    def plugin_routes(self) -> list[PluginRoutes]:
        """Each loaded plugin's name, base and blueprints, in dependency order."""
        return [
            (r.name, r.candidate.manifest.base if r.candidate.manifest else "/", r.blueprints)
            for r in self.loaded
        ]

    def _exclude(self, rec: PluginRecord, reason: str, exc: BaseException | None = None) -> None:
        """Fail `rec` (logging the traceback of `exc`, its cause) and every loaded plugin
        that requires it."""
        rec.fail(reason, exc)
        loaded = self.loaded
        manifests = {
            r.name: r.candidate.manifest for r in loaded if r.candidate.manifest is not None
        }  # every loaded plugin has one
        for name in dependents_of(rec.name, manifests, [r.name for r in loaded]):
            next(r for r in loaded if r.name == name).fail(f"dependency {rec.name} failed")

    def _check_strict(self) -> None:
        failed = [r for r in self.records if r.status == FAILED]
        if self.settings.strict and failed:
            raise BuildError("strict mode: " + "; ".join(f"{r.name}: {r.error}" for r in failed))

    async def _migrate(self) -> dict[str, list[str]]:
        """Bring each loaded plugin's tables to its newest revision, in dependency order
        (a plugin's tables may refer to its dependencies'). A plugin whose migrations fail
        is excluded with its dependents, whose migrations are then not run.

        :return: the revisions applied, by plugin (`courtyard db upgrade` prints them).
        """
        applied: dict[str, list[str]] = {}
        for rec in self.loaded:
            folder = self.migrations_of(rec)
            if folder is None or rec.status != LOADED:  # excluded with a dependency
                continue
            try:
                applied[rec.name] = await self.services.database.upgrade(rec.name, folder)
            except Exception as exc:
                cause = exc if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
                self._exclude(rec, f"migrations failed: {cause}", exc)
        return applied

    def _collect_credentials(self) -> None:
        """Gather the loaded plugins' credentials; a plugin whose credentials name an
        unknown role is excluded before it starts."""
        found = []
        for rec in self.loaded:
            if rec.status != LOADED:  # excluded with a dependency meanwhile
                continue
            manifest = rec.candidate.manifest
            assert manifest is not None  # discovery failed the plugins without one
            try:
                found += self.services.auth.plugin_credentials(
                    rec.name, manifest, self.settings.plugins.get(rec.name, {})
                )
            except SettingsError as exc:
                self._exclude(rec, str(exc))
        self.credentials = CredentialSet(found).only(r.name for r in self.loaded)

    def migrations_of(self, rec: PluginRecord) -> Path | None:
        """The folder of `rec`'s Alembic revisions, if its manifest names one."""
        manifest = rec.candidate.manifest
        if manifest is None or manifest.migrations is None:
            return None
        return rec.candidate.root / manifest.migrations

    async def _start(self) -> None:
        timeout = self.settings.startup_timeout
        for rec in self.loaded:
            failure = await self.hooks.lifecycle(rec, "courtyard_startup", timeout)
            if failure is None:
                rec.started = True
            elif isinstance(failure.error, TimeoutError):  # no traceback for a timeout
                self._exclude(rec, failure.reason)
            else:
                self._exclude(rec, failure.reason, failure.error)

    # Retiring ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Run shutdown hooks of every started plugin, once, in reverse order."""
        if self.app is not None:
            try:
                await self.app.shutdown()
            except Exception:
                log.exception("generation %d: app shutdown failed", self.number)
        for rec in reversed([r for r in self.records if r.started]):
            rec.started = False
            timeout = self.settings.startup_timeout
            if failure := await self.hooks.lifecycle(rec, "courtyard_shutdown", timeout):
                log.error("%s | courtyard_shutdown failed: %r", rec.name, failure.error)
        loading.forget_generation(self.number)


class _Directory:
    """The generation's plugins as plugins see them (`ctx.plugins`, courtyard_sdk.plugins):
    read at each call, so a plugin's startup sees the outcome of those before it."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation

    def list(self) -> list[PluginInfo]:
        """Every plugin found (shadowed ones aside)."""
        records = self._generation.records
        return [_info(rec) for rec in records if rec.candidate.shadowed_by is None]

    def get(self, name: str) -> PluginInfo | None:
        """The plugin called `name`, if found."""
        return next((info for info in self.list() if info.name == name), None)


def _info(rec: PluginRecord) -> PluginInfo:
    """A record as a plugin may see it (no context, no module, no service)."""
    manifest = rec.candidate.manifest
    return PluginInfo(
        name=rec.name,
        version=manifest.version if manifest else "",
        status=PluginStatus(rec.status),
        source=rec.candidate.source,
        description=manifest.description if manifest else "",
        base=manifest.base if manifest else None,
        error=rec.error,
        menus=manifest.menus if manifest else (),
        manifest=manifest,
    )
