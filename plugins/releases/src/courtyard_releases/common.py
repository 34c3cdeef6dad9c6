"""What every route module shares: the tenant's session, the caller, request bodies,
audit entries, the blueprint with the API's error envelope, and OpenAPI answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from courtyard_sdk import ApiError, Blueprint, PluginContext, request
from courtyard_sdk.identity import current_identity, require_tenant
from courtyard_sdk.openapi import errors, responds
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from quart_schema import document_querystring
from sqlmodel.ext.asyncio.session import AsyncSession

from .crypto import Sealer
from .envelope import PREFIX, ReleasesError, error_response

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])
OPEN_TENANT = "default"  # the tenant of an open (loopback, unauthenticated) server
READ, WRITE, APPROVE = "releases:read", "releases:write", "releases:approve"


class Body(BaseModel):
    """A request body: camelCase names, unknown keys refused, no NaN."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )


class ListParams(BaseModel):
    """The common query parameters of every list."""

    page: int | None = None
    pageSize: int | None = None  # the documented name
    sort: str | None = None
    filter: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who is calling: subject, tenant and roles."""

    subject: str
    tenant: str
    roles: frozenset[str]


def caller() -> Caller:
    """The caller; 401 / 403 `TENANT_REQUIRED` without a tenant (an open server's caller
    acts for the tenant `default`)."""
    identity = current_identity()
    tenant = OPEN_TENANT if identity.kind == "open" else require_tenant()
    return Caller(identity.subject, tenant, identity.roles)


@dataclass(frozen=True)
class Api:
    """The plugin's services as routes use them."""

    ctx: PluginContext

    def session(self) -> AsyncSession:
        """A session that reads and writes only the caller's tenant's rows."""
        return self.ctx.db.session(tenant=caller().tenant)

    def session_for(self, tenant: str) -> AsyncSession:
        """A session scoped to `tenant` (an agent, known by its token)."""
        return self.ctx.db.session(tenant=tenant)

    def unscoped(self) -> AsyncSession:
        """A session that sees every tenant: only to find an agent before its token is
        checked."""
        return self.ctx.db.session()

    @property
    def sealer(self) -> Sealer:
        """The generation's sealer (made at startup)."""
        return self.ctx.state[Sealer]

    async def audit(self, action: str, target: str, **details: Any) -> None:
        """An audit entry for a mutation (never with a secret in `details`)."""
        await self.ctx.audit.record(f"releases.{action}", target=target, details=details)

    async def publish(self, topic: str, tenant: str, **data: Any) -> None:
        """An event of the tenant on the bus (`releases.<topic>`). What it reports is
        already committed, so a bus that is down costs the event, never the change."""
        try:
            await self.ctx.events.publish(f"releases.{topic}", data, tenant=tenant)
        except Exception as exc:  # EventBusUnavailable, a closed bus at shutdown
            self.ctx.logger.warning("event releases.%s not published: %s", topic, exc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


async def json_body() -> Any:
    """The request's JSON body; 400 `INVALID_JSON` when it is not JSON."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ReleasesError(400, "INVALID_JSON", "the body is not valid JSON") from None


def validate(model: type[M], data: Any) -> M:
    """`data` as `model`; 400 `VALIDATION_ERROR` listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"],
                "code": error["type"].upper(),
            }
            for error in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise ReleasesError(
            400,
            "VALIDATION_ERROR",
            f"{first['field']}: {first['message']}",
            validation_errors=problems,
        ) from None


async def body(model: type[M]) -> M:
    """The request body as `model`."""
    return validate(model, await json_body())


def loads(text: str) -> Any:
    """A JSON column's value."""
    return json.loads(text)


def dumps(value: Any) -> str:
    """A JSON column's text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def blueprint(name: str) -> Blueprint:
    """A blueprint under `/api/v1` whose errors answer in the API's envelope."""
    bp = Blueprint(name, __name__, url_prefix=PREFIX)

    @bp.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Any:
        return error_response(exc)

    return bp


ENVELOPE = {
    "type": "object",
    "required": ["success", "data", "meta"],
    "properties": {
        "success": {"type": "boolean"},
        "data": {},
        "meta": {
            "type": "object",
            "properties": {
                "requestId": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
                "pagination": {"type": "object"},
            },
        },
    },
}


def answers(status: int, description: str) -> Callable[[F], F]:
    """Declare the route's success answer in the envelope (204: no body)."""
    if status == 204:
        return responds(204, description, media_type=None)
    return responds(status, description, schema=ENVELOPE)


def listed(description: str) -> Callable[[F], F]:
    """Declare a list route: its query parameters, its answer and its 400."""

    def decorate(view: F) -> F:
        view = answers(200, description)(view)
        view = errors((400, "VALIDATION_ERROR"))(view)
        return document_querystring(ListParams)(view)

    return decorate
