"""The request path. Each generation's Quart app is assembled here.

Hypercorn -> Dispatcher (dispatcher.py: picks the serving generation) -> this app:
    request id, identity, CSRF -> plugin `courtyard_request` hooks (_install_request_path)
    core routes (courtyard/core/) and plugin blueprints
    plugin `courtyard_response` hooks -> X-Request-Id            (_install_request_path)
Errors anywhere become `{"error": {"code", "message"}}` (errors.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from courtyard_sdk import ApiError
from courtyard_sdk.events import RETIRING
from courtyard_sdk.identity import G_ATTRIBUTE, PERMISSIONS_ATTRIBUTE, check
from courtyard_sdk.origin import allows_without_origin
from courtyard_sdk.request_ids import REQUEST_ID
from courtyard_sdk.status import PluginStatus
from pydantic import BaseModel
from quart import Blueprint, Quart, Request, Response, g, websocket
from quart.globals import request_ctx
from quart.json.provider import DefaultJSONProvider
from quart_schema import QuartSchema

from . import __version__, console, errors, security
from .asgi import Scope, header
from .core import (
    GENERATION,
    RUNTIME,
    Runtime,
    apps_api,
    audit_api,
    cluster_api,
    events_api,
    health,
    keys_api,
    meta,
    plugins_api,
)
from .core.meta import CourtyardOpenAPIProvider
from .json_provider import JSONProvider
from .limits import UPLOAD_PATHS
from .quart_app import GenerationApp
from .request_audit import watch_requests
from .routes import mount_plugins

if TYPE_CHECKING:
    from quart.typing import ResponseTypes

    from .generation import Generation


def create_app(
    runtime: Runtime, generation: Generation, *, explain_failures: bool = False
) -> Quart:
    """Assemble the Quart app serving `generation`'s loaded plugins.

    :param explain_failures: answer requests under a failed plugin's base with why it
        failed (`courtyard dev`), rather than 404.
    """
    app = GenerationApp("courtyard", static_folder=None)  # no /static route to shadow an app
    app.request_class = cast(
        "type[_Request]",
        type("Request", (_Request,), {"upload_max_bytes": generation.settings.upload_max_bytes}),
    )
    app.extensions[RUNTIME] = runtime
    app.extensions[GENERATION] = generation
    QuartSchema(
        app,
        # core/docs_ui.py serves the document (cached) and the docs page itself.
        openapi_path=None,
        scalar_ui_path=None,
        swagger_ui_path=None,
        redoc_ui_path=None,
        info={"title": "Courtyard", "version": __version__, "description": meta.DESCRIPTION},
        tags=[
            *meta.CORE_TAGS,
            *(
                {"name": r.name, "description": r.candidate.manifest.description or r.name}
                for r in generation.loaded
                if r.blueprints and r.candidate.manifest is not None
            ),
        ],
        openapi_provider_class=CourtyardOpenAPIProvider,
        security_schemes=meta.SECURITY_SCHEMES,
    )
    # Models still encoded by quart-schema's provider's `default`.
    app.json = JSONProvider(app, default=cast(DefaultJSONProvider, app.json).default)
    _skip_conversion_of_plain_values(app)
    meta.configure_docs_script(app, generation.settings.docs_script)

    errors.install(app)
    for blueprint in (health.blueprint, plugins_api.blueprint, apps_api.blueprint, meta.blueprint):
        app.register_blueprint(blueprint)
    app.register_blueprint(audit_api.blueprint)
    app.register_blueprint(keys_api.blueprint)
    app.register_blueprint(events_api.blueprint)
    app.register_blueprint(cluster_api.blueprint)
    console.mount(app, generation.settings)
    # Set when this generation retires or the server stops: event streams end then.
    app.extensions[RETIRING] = asyncio.Event()

    mount_plugins(app, generation.plugin_routes())
    if explain_failures:
        _mount_failures(app, generation)
    _install_request_path(app, generation)
    return app


def _mount_failures(app: Quart, generation: Generation) -> None:
    """At each failed plugin's base (not taken by a loaded one), `503 PLUGIN_FAILED`
    with its error: in development, the answer to the next request says what broke."""
    taken = {base for _, base, _ in generation.plugin_routes()}
    for rec in generation.records:
        manifest = rec.candidate.manifest
        if rec.status != PluginStatus.FAILED or manifest is None or manifest.base in taken:
            continue
        taken.add(manifest.base)
        failure = ApiError(503, "PLUGIN_FAILED", f"plugin {rec.name} failed to load: {rec.error}")

        async def failed(path: str = "", failure: ApiError = failure) -> Response:
            raise failure

        bp = Blueprint(f"failed_{len(taken)}", __name__)
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        bp.add_url_rule("/", "failed", failed, methods=methods)
        bp.add_url_rule("/<path:path>", "failed_path", failed, methods=methods)
        app.register_blueprint(bp, url_prefix=(manifest.base or "/").rstrip("/"))


class _Request(Request):
    """Quart's request, with the matched blueprint worked out once instead of a dozen
    times per request (every plugin route is in a blueprint), and a body limit that
    lets archive uploads through (MAX_CONTENT_LENGTH still bounds every other body)."""

    _blueprint: str | None = None
    upload_max_bytes: int | None = None  # set per app by create_app

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if method == "POST" and path in UPLOAD_PATHS:
            kwargs["max_content_length"] = self.upload_max_bytes
        super().__init__(method, scheme, path, *args, **kwargs)

    @property
    def blueprint(self) -> str | None:
        """The matched endpoint's blueprint (cached once the request is routed)."""
        if self._blueprint is None and self.url_rule is not None:
            self._blueprint = self.url_rule.endpoint.rpartition(".")[0]
        return self._blueprint or None

    @property
    def blueprints(self) -> list[str]:
        """The blueprint and its parents, innermost first (cached once routed)."""
        cached = self.__dict__.get("_blueprints")
        if cached is None:
            names = super().blueprints
            if self.url_rule is None:
                return names
            cached = self.__dict__["_blueprints"] = names
        return cached


_PLAIN_VALUES = (dict, list, str, bytes, Response)


class _Wrapper(Protocol):
    """A function wrapped with `functools.wraps`: what it wraps is `__wrapped__`."""

    __wrapped__: Callable[[Any], Awaitable[ResponseTypes]]


def _skip_conversion_of_plain_values(app: Quart) -> None:
    """Send plain return values straight to Quart.

    quart-schema converts every return value with a fresh pydantic TypeAdapter, which costs
    more than the rest of the request. Only models need it; models nested in plain values
    are still serialised by its JSON provider.
    """
    converting = app.make_response
    plain = cast(_Wrapper, converting).__wrapped__  # quart-schema wraps Quart's own

    async def make_response(result: Any) -> ResponseTypes:
        parts = result if isinstance(result, tuple) else (result,)
        if isinstance(parts[0], _PLAIN_VALUES) and all(
            not isinstance(part, BaseModel) for part in parts[1:]
        ):
            return await plain(result)
        return await converting(result)

    app.make_response = make_response  # type: ignore[method-assign]  # replaced on purpose


def _install_request_path(app: Quart, generation: Generation) -> None:
    """One before- and one after-request function (Quart pays for each one per request):
    request id, identity (services/auth.py) and CSRF, then plugins' `courtyard_request`
    hooks; plugins' `courtyard_response` hooks, then the request id on whatever response
    goes out."""

    # Called directly, not through pluggy's dispatch (hooks.py, Hooks.chain).
    on_request = generation.hooks.chain(generation.loaded, "courtyard_request")
    on_response = generation.hooks.chain(reversed(generation.loaded), "courtyard_response")
    audit = watch_requests(generation.services.audit, app)  # None while the log is off
    auth, credentials = generation.services.auth, generation.credentials

    async def before() -> Any:
        # The request itself, not the `request` proxy: each access through it costs a lookup.
        current = request_ctx.request
        headers = current.headers
        # Set in the request's own task: its after-request function sees it too. From the
        # scope: werkzeug's lookup of a header the request lacks raises and catches inside.
        scope = cast(Scope, current.scope)  # Quart types it as a TypedDict
        REQUEST_ID.set(security.request_id_for(header(scope, b"x-request-id")))
        # A bad credential is refused here (401), before anything else looks at it.
        identity = await auth.identify(headers, credentials, current.remote_addr)
        # No credential header: a console session cookie may stand for one.
        session = await console.session_identity(auth) if identity.kind == "anonymous" else None
        from_cookie = session is not None
        identity = session or identity
        setattr(g, G_ATTRIBUTE, identity)
        # A verified credential header is no browser's doing: only requests without one,
        # and every request a session cookie authenticates, are checked for their origin.
        if current.method in security.STATE_CHANGING and (
            from_cookie or not identity.authenticated
        ):
            rule = current.url_rule
            view = app.view_functions.get(rule.endpoint) if rule else None
            # A route's own 401 comes before any 403: a client answers it with a key.
            check(*getattr(view, PERMISSIONS_ATTRIBUTE, ()))
            security.check_origin(
                current.scheme,
                current.host,
                headers,
                may_omit=allows_without_origin(view) and not from_cookie,
            )
        if on_request:  # the first answer that is not None is sent
            return await on_request.first(request=current)
        return None

    async def after(response: Response) -> Response:
        current = request_ctx.request
        if on_response:  # each may replace the response
            response = await on_response.fold(
                "response", app.make_response, request=current, response=response
            )
        response.headers["X-Request-Id"] = REQUEST_ID.get()
        if audit is not None and current.method in security.STATE_CHANGING:
            await audit.after(response.status_code)  # queued: no database write here
        return response

    async def before_websocket() -> None:
        identity = await auth.identify(websocket.headers, credentials)
        session = await console.session_identity(auth) if identity.kind == "anonymous" else None
        from_cookie = session is not None
        setattr(g, G_ATTRIBUTE, session or identity)
        if from_cookie or not identity.authenticated:
            # A handshake without Origin is a program's, unless it brings a cookie.
            security.check_origin(
                websocket.scheme, websocket.host, websocket.headers, may_omit=not from_cookie
            )

    app.before_request(before)
    app.after_request(after)
    app.before_websocket(before_websocket)
