"""Every error answered as `{"error": {"code", "message"}}`: no HTML, no stack traces."""

from __future__ import annotations

import logging

from courtyard_sdk import ApiError
from quart import Quart, Response, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("courtyard.errors")


def error_response(status: int, code: str, message: str) -> Response:
    """The documented error body with `status`."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _code(exc: HTTPException) -> str:
    """`Method Not Allowed` -> `METHOD_NOT_ALLOWED`."""
    return (exc.name or "error").upper().replace(" ", "_").replace("'", "")


def install(app: Quart) -> None:
    """Register the handlers that turn every exception into the error envelope."""

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:  # RFC 9110: a 401 names the scheme to authenticate with
            response.headers["WWW-Authenticate"] = 'Bearer realm="courtyard"'
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def validation_error(exc: RequestSchemaValidationError) -> Response:
        return error_response(400, "VALIDATION_ERROR", str(exc.validation_error))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, _code(exc), exc.description or exc.name)
        if exc.code == 405 and (valid := getattr(exc, "valid_methods", None)):
            response.headers["Allow"] = ", ".join(valid)
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "internal server error")
