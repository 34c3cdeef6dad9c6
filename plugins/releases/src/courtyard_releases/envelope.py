"""The API's envelope: `{"success", "data", "meta"}` answers and `{"success": false,
"error"}` errors, with the runtime's request id in `meta.requestId`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from courtyard_sdk import ApiError, Response, current_request_id

PREFIX = "/api/v1"


class ReleasesError(ApiError):
    """An error of the orchestrator's API, with optional `details` and `validationErrors`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        validation_errors: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.details = dict(details) if details is not None else None
        self.validation_errors = list(validation_errors) if validation_errors else None


def invalid(field: str, message: str, code: str = "INVALID_VALUE") -> ReleasesError:
    """A 400 `VALIDATION_ERROR` naming one field."""
    return ReleasesError(
        400,
        "VALIDATION_ERROR",
        f"{field}: {message}",
        validation_errors=[{"field": field, "message": message, "code": code}],
    )


def not_found(what: str, ident: str) -> ReleasesError:
    """A 404 `<WHAT>_NOT_FOUND`."""
    return ReleasesError(404, f"{what.upper()}_NOT_FOUND", f"{what} {ident!r} not found")


def conflict(code: str, message: str, **details: Any) -> ReleasesError:
    """A 409 state conflict."""
    return ReleasesError(409, code, message, details=details or None)


def now_text() -> str:
    """The current UTC time, ISO 8601 with a `Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def meta(pagination: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `meta` object of every answer."""
    out: dict[str, Any] = {"requestId": current_request_id() or "", "timestamp": now_text()}
    if pagination is not None:
        out["pagination"] = dict(pagination)
    return out


def _json(body: Any, status: int) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), default=str),
        status=status,
        content_type="application/json",
    )


def ok(data: Any, status: int = 200, pagination: Mapping[str, Any] | None = None) -> Response:
    """A success answer."""
    return _json({"success": True, "data": data, "meta": meta(pagination)}, status)


def created(data: Any) -> Response:
    """A 201 answer."""
    return ok(data, 201)


def no_content() -> Response:
    """A 204 answer (no body)."""
    return Response("", status=204)


def error_body(
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    validation_errors: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The body of an error answer."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = dict(details)
    if validation_errors:
        error["validationErrors"] = list(validation_errors)
    return {"success": False, "error": error, "meta": meta()}


def error_response(exc: ApiError) -> Response:
    """The answer to an `ApiError` (a `ReleasesError` keeps its details)."""
    details = getattr(exc, "details", None)
    validation = getattr(exc, "validation_errors", None)
    response = _json(error_body(exc.code, exc.message, details, validation), exc.status)
    for name, value in exc.headers.items():
        response.headers[name] = value
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="courtyard"'
    return response


async def rewrap(response: Response) -> Response | None:
    """Put an error the runtime answered under `/api/v1` (a bad credential refused before
    the route, an unknown path, a wrong method) into the envelope; None to keep it."""
    if response.status_code < 400 or response.mimetype != "application/json":
        return None
    try:
        body = json.loads(await response.get_data(as_text=True))
    except ValueError:
        return None
    if not isinstance(body, dict) or "success" in body or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    code = str(error.get("code") or "ERROR")
    message = str(error.get("message") or "")
    response.set_data(json.dumps(error_body(code, message), separators=(",", ":")).encode())
    return response
