"""The OpenAPI 3.1 document of a generation: `GET /api/openapi.json`.

quart-schema builds each operation from the route's decorators; `CourtyardOpenAPIProvider`
then adds, in this one place, what holds for every route:

- an operationId qualified by its owner, `core.<method>_<view>` or
  `<plugin>.<method>_<view>`, made unique over the whole document (a plugin, uploaded or
  not, can never take another owner's id);
- plugin models under `components.schemas` as `<plugin>.<Model>`, so that two plugins'
  models of one name stay apart;
- the plugin's tag; the credentials and `x-permissions` of a route guarded with `require`;
- the error answers in the runtime's envelope (`courtyard.Error`) that any route of its
  kind can give, the ones the route declares with `courtyard_sdk.openapi.errors`, and a
  default; the success answers `courtyard_sdk.openapi.responds` declares, else a 200.

Every HTTP route is listed, also those marked with quart-schema's `hide`: the document
describes everything the server answers. WebSocket routes are not (OpenAPI has no way to
describe them).

The document is built once per generation, on first request, and served as cached bytes
with an ETag.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, cast

from courtyard_sdk.identity import PERMISSIONS_ATTRIBUTE
from courtyard_sdk.names import slug
from courtyard_sdk.openapi import (
    ERRORS_ATTRIBUTE,
    ERRORS_ONLY_ATTRIBUTE,
    RESPONSES_ATTRIBUTE,
    errors,
    responds,
)
from pydantic import BaseModel, Field
from quart import Quart, Response, current_app, request
from quart_schema import OpenAPIProvider
from quart_schema.openapi import APIKeySecurityScheme, HttpSecurityScheme
from werkzeug.routing import Rule

from ..routes import CORE, owner_of

# The two ways to present a credential (docs/security.md).
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": HttpSecurityScheme(scheme="bearer", bearer_format="API key or JWT"),
    "apiKey": APIKeySecurityScheme(name="X-API-Key", in_="header"),
}
CORE_QUALIFIER = "core"
DESCRIPTION = (
    "The runtime's API (Buntime's API: health, plugins, apps) and the routes of every "
    "plugin the serving generation runs, each tagged with its plugin's name. Errors answer "
    '`{"error": {"code", "message"}}`. Operation ids are `core.<method>_<view>` for the '
    "runtime's routes and `<plugin>.<method>_<view>` for a plugin's."
)
# The core's tags (a plugin's tag is its name and its manifest's description).
CORE_TAGS: list[dict[str, str]] = [
    {"name": "health", "description": "Liveness and readiness probes"},
    {"name": "plugins", "description": "List, upload, reload and remove plugins"},
    {"name": "apps", "description": "List, upload and remove apps"},
    {"name": "keys", "description": "API keys"},
    {"name": "audit", "description": "The audit log"},
    {"name": "events", "description": "Runtime and plugin events as Server-Sent Events"},
    {"name": "cluster", "description": "The instances sharing this one's database"},
    {"name": "meta", "description": "This document, the docs page, discovery"},
    {"name": "console", "description": "The operator console's pages (HTML) and files"},
]
STATE_CHANGING = frozenset({"post", "put", "patch", "delete"})
# Names of our own components: a dot keeps them apart from any model's name.
ERROR_SCHEMA = "courtyard.Error"
REQUEST_ID_HEADER = "X-Request-Id"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
_PARAMETER = re.compile(r"\{[^}]+\}")
_PATH_VARIABLE = re.compile(r"<(?:[^:<>]*:)?([^<>]+)>")  # a rule variable, converter optional
_REF = "#/components/schemas/"

# What each error status means in this API; statuses not listed get HTTP's phrase.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is not valid: a bad body, query or path parameter",
    401: "A credential is needed and none was presented, or the one presented is not valid",
    403: "The credential lacks a permission, or a state-changing request came from "
    "another origin without a credential (`CSRF_FAILED`)",
    404: "No such resource",
    408: "Timed out waiting",
    409: "The request conflicts with the resource's state",
    413: "The request body is larger than the server accepts",
    422: "Understood, but it could not be done",
    429: "Too many requests: a rate limit of the gateway, or too many failed "
    "authentications from this address; `Retry-After` says when to try again (the "
    "gateway's answer also carries `success: false`)",
    500: "The server failed",
    503: "Not available right now",
}
DEFAULT_ERROR = "Any other error; `error.code` says which"


class ArchiveUpload(BaseModel):
    """An archive upload (`multipart/form-data`)."""

    file: bytes = Field(
        description="The archive: .tgz, .tar.gz or .zip",
        json_schema_extra={"contentMediaType": "application/octet-stream"},
    )


class AppUploadQuery(BaseModel):
    """The query of `POST /api/apps/upload`."""

    overwrite: bool = Field(False, description="Replace the version if it is installed")


# What every archive upload can be refused with (core/uploads.py, archives.py).
archive_errors = errors(
    (400, "NO_FILE_PROVIDED"),
    (400, "INVALID_FILE_TYPE"),
    (400, "CORRUPT_ARCHIVE"),
    (400, "INVALID_ENTRY"),
    (400, "UNSAFE_ENTRY"),
    (400, "DUPLICATE_ENTRY"),
    (400, "TOO_MANY_ENTRIES"),
    (400, "ARCHIVE_BOMB"),
    (400, "PATH_TRAVERSAL"),
    (400, "INVALID_MANIFEST"),
    (413, "ARCHIVE_TOO_LARGE"),
)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The envelope of every error answer.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "A stable code in capitals.",
                        "examples": ["VALIDATION_ERROR"],
                    },
                    "message": {"type": "string", "description": "What went wrong, for people."},
                },
            }
        },
    }


def _component_name(status: int) -> str:
    """`404` -> `NotFound`: the name of a status's shared response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return f"Error{status}"
    return re.sub(r"[^A-Za-z0-9]", "", phrase.title())


def _error_response(status: int) -> dict[str, Any]:
    description = ERROR_DESCRIPTIONS.get(status)
    if description is None:
        try:
            description = HTTPStatus(status).phrase
        except ValueError:
            description = f"Error {status}"
    answer: dict[str, Any] = {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": f"#/components/headers/{REQUEST_ID_HEADER}"}},
        "content": {"application/json": {"schema": dict(_ERROR_REF)}},
    }
    if status in (429, 503):
        answer["headers"]["Retry-After"] = {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer"},
        }
    return answer


class CourtyardOpenAPIProvider(OpenAPIProvider):
    """quart-schema's provider, with Courtyard's operationIds, tags, security, error
    answers and component names, built once per generation (see the module's doc)."""

    def __init__(self, app: Quart, extension: Any) -> None:
        super().__init__(app, extension)
        self._document: dict[str, Any] | None = None
        self._encoded: tuple[bytes, str] | None = None
        # (path, method) -> (qualifier, blueprint, view): to settle clashing ids.
        self._origins: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._statuses: set[int] = set()  # the shared error responses referenced

    # -- the document, once ---------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """The document (a copy: the cached one is never handed out to be changed)."""
        return copy.deepcopy(self.document())

    def document(self) -> dict[str, Any]:
        """The cached document, built on first use. Do not change it."""
        if self._document is None:
            self._document = self._build()
        return self._document

    def encoded(self) -> tuple[bytes, str]:
        """The document as JSON bytes, and their ETag."""
        if self._encoded is None:
            body = self._app.json.dumps(self.document()).encode()
            self._encoded = body, hashlib.sha256(body).hexdigest()[:32]
        return self._encoded

    def _build(self) -> dict[str, Any]:
        self._origins.clear()
        self._statuses.clear()
        document = super().schema()
        document["paths"] = dict(document["paths"])
        if "tags" in document:  # a plugin named like a core tag: one entry per name
            first: dict[str, Any] = {}
            for entry in document["tags"]:
                first.setdefault(entry["name"], entry)
            document["tags"] = list(first.values())
        self._settle_operation_ids(document["paths"])
        components = document["components"]
        components["schemas"][ERROR_SCHEMA] = _error_schema()
        components["responses"] = {
            _component_name(status): _error_response(status) for status in sorted(self._statuses)
        }
        components["responses"]["Error"] = {**_error_response(500), "description": DEFAULT_ERROR}
        components["headers"] = {
            REQUEST_ID_HEADER: {
                "description": "The request's id: the one sent, if sane, else a new one",
                "schema": {"type": "string"},
            }
        }
        return document

    def generate_rules(self) -> Iterable[Rule]:
        """Every HTTP route, hidden ones too (WebSocket routes have no OpenAPI form)."""
        return (rule for rule in self._app.url_map.iter_rules() if not rule.websocket)

    # -- one rule -------------------------------------------------------------------------

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        """quart-schema's path objects, completed as the module's doc says."""

        paths, components = super().build_paths(rule)
        # quart-schema's pattern runs from a plain `<id>` into the next variable
        # (`/p/<id>/f/<path:rest>` became `/p/{rest}`): the path, worked out again.
        paths = {_PATH_VARIABLE.sub(r"{\1}", rule.rule): ops for ops in paths.values()}
        func = self._app.view_functions[rule.endpoint]
        owner = owner_of(cast(Quart, self._app), rule)  # a weak proxy to the app
        qualifier = CORE_QUALIFIER if owner == CORE else owner
        endpoint_bp, _, view = rule.endpoint.rpartition(".")
        blueprint = endpoint_bp.partition("__")[2] if owner != CORE else endpoint_bp or "app"
        if owner != CORE:
            paths, components = _qualify_components(paths, components, f"{slug(owner)}.")
        permissions = getattr(func, PERMISSIONS_ATTRIBUTE, None)
        # Errors declared on the blueprint (`errors(...)(bp)`) apply to each of its routes.
        shared_errors = getattr(self._app.blueprints.get(endpoint_bp), ERRORS_ATTRIBUTE, {})
        for path, operations in paths.items():
            for method, shared in list(operations.items()):
                operation = copy.deepcopy(shared)  # quart-schema shares parts between methods
                operations[method] = operation
                name = operation.get("operationId", f"{method}_{view}")
                operation["operationId"] = f"{qualifier}.{name}"
                self._origins[(path, method)] = (qualifier, blueprint, name)
                if owner != CORE:
                    operation["tags"] = sorted({*operation.get("tags", []), owner})
                elif not operation.get("tags"):
                    core_tags = {entry["name"] for entry in CORE_TAGS}
                    operation["tags"] = [blueprint if blueprint in core_tags else "meta"]
                if permissions is not None:
                    operation["security"] = [{scheme: []} for scheme in SECURITY_SCHEMES]
                    operation["x-permissions"] = list(permissions)
                operation["responses"] = self._responses(
                    operation, func, path, method, shared_errors
                )
        return paths, components

    def _responses(
        self,
        operation: dict[str, Any],
        func: Any,
        path: str,
        method: str,
        shared_errors: dict[int, list[str]],
    ) -> dict[str, Any]:
        """The operation's answers: declared successes (a 200 when none), the error
        answers of its kind and the declared ones, then a default."""
        declared = {str(k): v for k, v in operation["responses"].items()}
        declared.update(getattr(func, RESPONSES_ATTRIBUTE, {}))
        succeeds = not getattr(func, ERRORS_ONLY_ATTRIBUTE, False)
        if succeeds and not any(int(status) < 400 for status in declared if status.isdigit()):
            declared["200"] = {
                "description": "Success",
                "content": {"application/json": {"schema": {}}},
            }
        for answer in declared.values():
            if "$ref" not in answer:
                answer.setdefault("headers", {}).setdefault(
                    REQUEST_ID_HEADER, {"$ref": f"#/components/headers/{REQUEST_ID_HEADER}"}
                )

        guarded = getattr(func, PERMISSIONS_ATTRIBUTE, None) is not None
        wanted: dict[int, list[str]] = defaultdict(list)
        wanted[401] += ["AUTHENTICATION_REQUIRED"] if guarded else []  # bad credentials: any
        if guarded:
            wanted[403].append("AUTHORIZATION_FAILED")
        if method in STATE_CHANGING and path.startswith("/api/"):
            wanted[403].append("CSRF_FAILED")
        has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
        if "requestBody" in operation or has_query:
            wanted[400].append("VALIDATION_ERROR")
        if "requestBody" in operation:
            wanted.setdefault(413, [])
        if _PARAMETER.search(path):
            wanted.setdefault(404, [])
        wanted.setdefault(429, [])
        for declared_errors in (shared_errors, getattr(func, ERRORS_ATTRIBUTE, {})):
            for status, codes in declared_errors.items():
                wanted[status] += [c for c in codes if c not in wanted[status]]

        responses = {s: declared[s] for s in sorted(declared, key=_status_order)}
        for status in sorted(wanted):
            if str(status) in responses:
                # The route's own answer (an HTML page, say), and the request path's JSON
                # error envelope, which comes before the view runs.
                content = responses[str(status)].get("content")
                if content is not None and "application/json" not in content:
                    responses[str(status)] = {
                        **responses[str(status)],
                        "content": {**content, "application/json": {"schema": dict(_ERROR_REF)}},
                    }
                continue
            self._statuses.add(status)
            error: dict[str, Any] = {"$ref": f"#/components/responses/{_component_name(status)}"}
            if wanted[status]:
                codes = ", ".join(f"`{c}`" for c in wanted[status])
                error["description"] = f"{_error_response(status)['description']}. Codes: {codes}"
            responses[str(status)] = error
        responses.setdefault("default", {"$ref": "#/components/responses/Error"})
        return {s: responses[s] for s in sorted(responses, key=_status_order)}

    def _settle_operation_ids(self, paths: dict[str, dict[str, Any]]) -> None:
        """Make every operationId unique: operations that share one (one view on two
        rules, two blueprints of one owner with views of one name, a plugin named `core`)
        get their blueprint's name in it, then, if still shared, a number (`_2`, ...) in
        document order."""

        def shared() -> list[list[dict[str, Any]]]:
            by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for operations in paths.values():
                for operation in operations.values():
                    by_id[operation["operationId"]].append(operation)
            return [same for same in by_id.values() if len(same) > 1]

        places = {
            id(operation): (path, method)
            for path, operations in paths.items()
            for method, operation in operations.items()
        }
        for same in shared():
            for operation in same:
                qualifier, blueprint, name = self._origins[places[id(operation)]]
                operation["operationId"] = f"{qualifier}.{blueprint}.{name}"
        taken = {op["operationId"] for operations in paths.values() for op in operations.values()}
        for same in shared():
            for operation in same[1:]:
                number = 2
                while f"{operation['operationId']}_{number}" in taken:
                    number += 1
                operation["operationId"] += f"_{number}"
                taken.add(operation["operationId"])


def _status_order(status: str) -> tuple[int, str]:
    return (int(status), "") if status.isdigit() else (1000, status)


def _qualify_components(
    paths: dict[str, Any], components: dict[str, Any], prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rename a plugin's schema components `<prefix><Model>`, and every reference to them."""
    if not components:
        return paths, components
    names = set(components)

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: (
                    _REF + prefix + item[len(_REF) :]
                    if key == "$ref"
                    and isinstance(item, str)
                    and item.startswith(_REF)
                    and item[len(_REF) :] in names
                    else rename(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [rename(item) for item in value]
        return value

    return rename(paths), {prefix + name: rename(schema) for name, schema in components.items()}


@responds(200, "The OpenAPI 3.1 document", headers={"ETag": "The document's version"})
@responds(304, "Not modified since the ETag sent in `If-None-Match`", media_type=None)
async def openapi_document() -> Response:
    """The OpenAPI 3.1 document of every route this server serves.

    Built once per generation (a reload builds a new one); revalidate with `If-None-Match`.
    """
    provider: CourtyardOpenAPIProvider = current_app.extensions["QUART_SCHEMA"].openapi_provider
    body, etag = provider.encoded()
    response = Response(body, content_type="application/json")
    response.set_etag(etag)
    response.cache_control.no_cache = True
    return await response.make_conditional(request)
