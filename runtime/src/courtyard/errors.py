"""Every error answered as `{"error": {"code", "message"}}`: no HTML, no stack traces.

Messages are redacted (redaction.py): a secret sent in a URL never comes back in one.

An exception that shows a dependency down (the database, Redis, a full disk) answers 503
or 507 with `Retry-After` (outages.py), logged once per interval rather than per request.

A safety net turns what a client's malformed request data makes the parsers raise
(`UnicodeDecodeError` for bytes that are not UTF-8, `RecursionError` for JSON nested too
deeply, `OSError` "File name too long" for a name no file system takes) into 400 answers
rather than 500s; the routes should refuse such data themselves first.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from types import TracebackType

from courtyard_sdk import ApiError
from quart import Quart, Response, has_request_context, jsonify, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from .mistakes import MistakeLog, explain
from .outages import OutageLog, classify
from .redaction import redact
from .routes import owner_of

log = logging.getLogger("courtyard.errors")

# Modules that read and decode request data: an error raised through one of them came
# from what the client sent (json: the standard library's decoder, which Quart uses).
PARSING_MODULES = (
    "json",
    "quart.json",
    "quart.wrappers.request",
    "quart.formparser",
    "quart_schema",
    "werkzeug.formparser",
    "werkzeug.sansio.multipart",
    "werkzeug.datastructures",
    "werkzeug.urls",
    "urllib.parse",
)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The documented error body with `status` (its message redacted)."""
    response = jsonify({"error": {"code": code, "message": redact(message)}})
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def _code(exc: HTTPException) -> str:
    """`Method Not Allowed` -> `METHOD_NOT_ALLOWED`."""
    return (exc.name or "error").upper().replace(" ", "_").replace("'", "")


def _through_parsing(traceback: TracebackType | None) -> bool:
    """Whether a traceback passes through code that reads request data."""
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if any(module == m or module.startswith(m + ".") for m in PARSING_MODULES):
            return True
        traceback = traceback.tb_next
    return False


def bad_request_data(exc: BaseException) -> ApiError | None:
    """The 400 answer to an exception that malformed request data caused, if it is one.

    A name too long for the file system can only have come from the request; the other
    two only count when raised while request data was being parsed, so that a bug
    elsewhere still answers 500 and is logged.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return ApiError(400, "NAME_TOO_LONG", "a name in the request is too long")
    if isinstance(exc, UnicodeDecodeError) and _through_parsing(exc.__traceback__):
        return ApiError(400, "INVALID_ENCODING", "the request data is not valid UTF-8")
    if isinstance(exc, RecursionError) and _through_parsing(exc.__traceback__):
        return ApiError(400, "NESTED_TOO_DEEPLY", "the request data is nested too deeply")
    return None


def install(app: Quart) -> None:
    """Register the handlers that turn every exception into the error envelope."""
    outages = OutageLog()
    mistakes = MistakeLog()

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.headers)
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
        if (refusal := bad_request_data(exc)) is not None:
            log.info("refused malformed request data (%s)", type(exc).__name__)
            return error_response(refusal.status, refusal.code, refusal.message)
        if (outage := classify(exc)) is not None:  # a dependency is down (outages.py)
            outages.note(outage, exc)
            error = outage.error()
            return error_response(error.status, error.code, error.message, error.headers)
        rule = request.url_rule if has_request_context() else None
        if rule is not None and (fix := explain(exc, owner_of(app, rule))) is not None:
            mistakes.note(fix)  # a plugin's data mistake (mistakes.py): say what to fix
            return error_response(500, "PLUGIN_ERROR", fix)
        log.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "internal server error")
