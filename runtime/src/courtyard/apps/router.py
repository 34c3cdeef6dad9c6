"""Requests for apps: `/<name>[@range]/...` and `/@scope/name[@range]/...`.

The Host asks `AppRouter.route` about every request; the serving generation's own routes
(core and plugins) win over apps. What a path routes to, and the version its range picks,
is worked out once and kept while the installed apps and the routes stay the same.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict
from urllib.parse import quote

from courtyard_sdk import ApiError

from ..asgi import Receive, Scope, Send, send_error, with_headers
from .config import WorkerApp
from .host import host_fd
from .registry import App, AppRegistry, AppVersion
from .static import serve_static
from .versions import InvalidRange, resolve

if TYPE_CHECKING:
    from typing import Any

    from ..settings import Settings

APP_PATH = re.compile(
    r"^/(?P<name>(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)"
    r"(?:@(?P<range>[^/]*))?(?P<rest>/.*)?\Z",
    re.DOTALL,
)
MAX_ROUTED = 1024  # paths whose routing is kept; past it, the kept ones are forgotten


class PoolOptions(TypedDict):
    """How the `WorkerPool` of ASGI apps is made (see its parameters)."""

    runtime_dir: Path
    app_data_dir: Path
    allow_unsandboxed: bool
    sandbox_user: str


def pool_options(settings: Settings) -> PoolOptions:
    """The worker pool's options from the settings: the same for the pool of a single
    server process (`AppRouter`) and for the one the supervisor of several holds."""
    return {
        "runtime_dir": settings.data_dir / "run",
        "app_data_dir": settings.data_dir / "app-data",
        "allow_unsandboxed": settings.apps_allow_unsandboxed,
        "sandbox_user": settings.apps_sandbox_user,
    }


class Pool(Protocol):
    """The ASGI apps' workers: a `WorkerPool` of this process, or, in a server process
    among several, its share of the supervisor's (`SharedPool`)."""

    async def handle(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request or WebSocket with `app`'s workers."""

    async def stop_app(self, key: str) -> None:
        """Stop `key`'s workers once their in-flight requests finish."""

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers (`WorkerPool.stats`)."""

    async def close(self) -> None:
        """Let go of the workers (a pool of this process's own stops them)."""


class Routes(Protocol):
    """The routes that win over apps: the serving generation's core and plugin routes."""

    def serves(self, path: str, method: str | None) -> bool:
        """Whether one of them answers `path`."""


@dataclass(frozen=True)
class AppRequest:
    """A request path split into the app, the version range asked for, and the rest."""

    app: App
    range: str | None
    prefix: str  # what the app sees as its root path: "/name@range"
    rest: str

    @functools.cached_property
    def version(self) -> AppVersion:
        """The installed version the range picks, worked out once (the router keeps this
        object for every request to the same path).

        :raises ApiError: 400 `INVALID_RANGE`, 404 `VERSION_NOT_FOUND`.
        """
        try:
            picked = resolve(self.app.versions, self.range)
        except InvalidRange as exc:
            raise ApiError(400, "INVALID_RANGE", str(exc)) from None
        if picked is None:
            wanted = self.range or "latest"
            raise ApiError(404, "VERSION_NOT_FOUND", f"{self.app.name} has no version {wanted}")
        return self.app.versions[picked]


class AppRouter:
    """Finds the app a path names, resolves its version and serves it."""

    def __init__(self, registry: AppRegistry, options: PoolOptions) -> None:
        """:param options: for the worker pool of ASGI apps, made on first use."""
        self.registry = registry
        self.changes = asyncio.Lock()  # one install or removal of an app at a time
        self._pool_options = options
        # Several server processes share the supervisor's pool: it is known from the start
        # (its workers may serve apps this process never did); a pool of its own is
        # started on first use.
        self._pool: Pool | None = None
        if (fd := host_fd()) is not None:
            from .shared_pool import SharedPool

            self._pool = SharedPool(fd)
        # `route`'s answers by (path, method), for the set of apps and the routes they were
        # worked out with (held weakly: a retired generation must go); none before the first.
        self._routed: dict[tuple[str, str | None], AppRequest | None] = {}
        self._routed_apps: dict[str, App] = {}
        self._routed_by: Callable[[], Routes | None] = lambda: None

    def route(self, path: str, method: str | None, routes: Routes) -> AppRequest | None:
        """The app request `path` stands for, unless one of `routes` answers it (routes
        come first); remembered until the installed apps or `routes` change."""
        apps = self.registry.apps()
        if apps is not self._routed_apps or self._routed_by() is not routes:
            self._routed.clear()
            self._routed_apps, self._routed_by = apps, weakref.ref(routes)
        key = (path, method)
        try:
            return self._routed[key]
        except KeyError:
            pass
        routed = self.match(path)
        if routed is not None and routes.serves(path, method):
            routed = None
        if len(self._routed) >= MAX_ROUTED:  # any path may be asked for: stay bounded
            self._routed.clear()
        self._routed[key] = routed
        return routed

    def match(self, path: str) -> AppRequest | None:
        """The app request `path` stands for, if it names an installed app."""
        found = APP_PATH.match(path)
        if found is None:
            return None
        app = self.registry.get(found["name"])
        if app is None:
            return None
        prefix = path[: len(path) - len(found["rest"] or "")]
        return AppRequest(app, found["range"], prefix, found["rest"] or "")

    async def serve(
        self,
        request: AppRequest,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Resolve the version and answer (static files here, ASGI apps in workers).

        :param headers: added to every HTTP answer (the request's `X-Request-Id`).
        """
        try:
            version = request.version
        except ApiError as refusal:
            await send_error(send, refusal.status, refusal.code, refusal.message, headers)
            return
        if not request.rest and scope["type"] == "http":
            # /name -> /name/ so that the app's relative links resolve under its base.
            query = scope.get("query_string", b"").decode("latin-1")
            location = quote(scope.get("root_path", "") + request.prefix + "/", safe="/@^~")
            location += f"?{query}" if query else ""
            await send(
                {
                    "type": "http.response.start",
                    "status": 308,
                    "headers": [
                        (b"location", location.encode()),
                        (b"content-length", b"0"),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if version.config.entry is None:
            if scope["type"] != "http":
                await send({"type": "websocket.close", "code": 1003})
                return
            await serve_static(version, request.rest, scope, send, headers)
            return
        # ASGI: `path` keeps the full path and `root_path` names the part that is the
        # app's mount point (Quart, Starlette and uvicorn all read it that way).
        app_scope = {**scope, "root_path": scope.get("root_path", "") + request.prefix}
        await self.pool.handle(worker_app(version), app_scope, receive, with_headers(send, headers))

    @property
    def pool(self) -> Pool:
        """The worker processes of ASGI apps, started on first use: the supervisor's when
        it runs several server processes (shared_pool.py), else this process's own."""
        if self._pool is None:
            from .pool import WorkerPool

            self._pool = WorkerPool(**self._pool_options)
        return self._pool

    async def workers(self) -> list[dict[str, Any]]:
        """The ASGI apps' live workers (`WorkerPool.stats`); none before the first."""
        return [] if self._pool is None else await self._pool.workers()

    async def stop_keys(self, keys: list[str]) -> None:
        """Stop the workers of removed or replaced versions (`name@version`), once their
        requests have finished."""
        if self._pool is not None:
            for key in keys:
                await self._pool.stop_app(key)

    async def stop_paths(self, paths: Collection[str]) -> None:
        """Stop the workers of the versions installed at `paths` (`name/version`, or
        `name` for all its versions), once their requests have finished."""
        if self._pool is not None:

            def installed_at(key: str) -> bool:
                name, _, version = key.rpartition("@")
                return name in paths or f"{name}/{version}" in paths

            keys = {worker["key"] for worker in await self._pool.workers()}
            await self.stop_keys(sorted(k for k in keys if installed_at(k)))

    async def close(self) -> None:
        """Stop every worker process (in a server process among several, let go of the
        supervisor's)."""
        if self._pool is not None:
            await self._pool.close()


def worker_app(version: AppVersion) -> WorkerApp:
    """What the worker pool needs to run an ASGI app version."""
    config = version.config
    assert config.entry is not None
    # An AppConfig is an AppSettings: the worker settings are defined (and checked) once.
    return WorkerApp(key=version.key, root=version.root, entry=config.entry, settings=config)
