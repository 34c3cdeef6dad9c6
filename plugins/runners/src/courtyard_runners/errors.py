"""RustCI's runner API error envelope and codes.

Every error under `/api/runners` is answered as RustCI's runner API documents it::

    {"success": false, "error": {"code": "RUNNER_NOT_FOUND", "message": "...",
                                 "details": {"runner_id": "...", "timestamp": "..."}}}

Routes raise `RunnerError` (an `ApiError` with details); `envelope` turns any error body
the runtime or another plugin answered for these paths (a refused credential, the
Origin check, a rate limit) into the same shape, keeping its status and code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from courtyard_sdk import ApiError

from .formats import iso

PREFIX = "/api/runners"
# The runtime's own codes for a body the request could not give, in RustCI's words.
RENAMED = {"VALIDATION_ERROR": "INVALID_REQUEST", "BODY_NOT_ALLOWED": "INVALID_REQUEST"}


class RunnerError(ApiError):
    """An error of RustCI's runner API, with the `details` its envelope carries."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, headers)
        self.details = dict(details or {})


def body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The envelope: `details` with the `timestamp` of the answer."""
    return {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "details": {**(details or {}), "timestamp": iso(time.time())},
        },
    }


def answer(exc: ApiError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The answer to `exc`, in the envelope."""
    details = exc.details if isinstance(exc, RunnerError) else {}
    code = RENAMED.get(exc.code, exc.code)
    return body(code, exc.message, details), exc.status, dict(exc.headers)


def envelope(payload: Any) -> dict[str, Any] | None:
    """`payload` rewritten into the envelope when it is another error body
    (`{"error": {"code", "message"}}`), else None (already ours, or not an error)."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if not isinstance(error, dict) or "code" not in error:
        return None
    if isinstance(error.get("details"), dict) and "timestamp" in error["details"]:
        return None
    code = RENAMED.get(str(error["code"]), str(error["code"]))
    return body(code, str(error.get("message", "")))


def not_found(runner_id: str) -> RunnerError:
    """404 RUNNER_NOT_FOUND, in RustCI's words."""
    return RunnerError(
        404,
        "RUNNER_NOT_FOUND",
        f"Runner with ID '{runner_id[:200]}' not found",
        {"runner_id": runner_id[:200]},
    )


def job_not_found(runner_id: str, job_id: str) -> RunnerError:
    """404 JOB_NOT_FOUND: no such job on this runner."""
    return RunnerError(
        404,
        "JOB_NOT_FOUND",
        f"Job with ID '{job_id[:200]}' not found on runner '{runner_id[:200]}'",
        {"runner_id": runner_id[:200], "job_id": job_id[:200]},
    )


def invalid(message: str, **details: Any) -> RunnerError:
    """400 INVALID_REQUEST."""
    return RunnerError(400, "INVALID_REQUEST", message, details)


def unavailable(runner_id: str, why: str) -> RunnerError:
    """503 RUNNER_UNAVAILABLE: the runner cannot take jobs or control now."""
    return RunnerError(
        503,
        "RUNNER_UNAVAILABLE",
        f"Runner '{runner_id}' is not available: {why}",
        {"runner_id": runner_id},
    )


def conflict(code: str, message: str, **details: Any) -> RunnerError:
    """409 with `code`."""
    return RunnerError(409, code, message, details)


def bad_token() -> RunnerError:
    """401 INVALID_RUNNER_TOKEN: an agent route without this runner's token."""
    return RunnerError(
        401, "INVALID_RUNNER_TOKEN", "Missing or invalid runner token (X-Runner-Token)"
    )
