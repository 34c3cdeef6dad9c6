"""The queues plugin's error answers, in the runtime's `{"error": {"code", "message"}}`
envelope (runqy's API documents the statuses, not a body)."""

from __future__ import annotations

from courtyard_sdk import ApiError


def invalid(message: str, code: str = "VALIDATION_ERROR") -> ApiError:
    """400: a body or parameter that cannot be accepted."""
    return ApiError(400, code, message)


def queue_not_found(name: str, tried: str | None = None) -> ApiError:
    """404 QUEUE_NOT_FOUND, naming the normalized name too when it differs."""
    also = f" (also tried '{tried}')" if tried and tried != name else ""
    return ApiError(404, "QUEUE_NOT_FOUND", f"queue '{name}' not found{also}")


def task_not_found(task_id: str) -> ApiError:
    """404 TASK_NOT_FOUND."""
    return ApiError(404, "TASK_NOT_FOUND", f"task '{task_id}' not found")


def worker_not_found(worker_id: str) -> ApiError:
    """404 WORKER_NOT_FOUND."""
    return ApiError(404, "WORKER_NOT_FOUND", f"worker '{worker_id}' not found")


def config_not_found(name: str) -> ApiError:
    """404 CONFIG_NOT_FOUND."""
    return ApiError(404, "CONFIG_NOT_FOUND", f"queue configuration '{name}' not found")


def lease_lost(task_id: str) -> ApiError:
    """409 LEASE_LOST: the worker's lease on the task is gone."""
    return ApiError(
        409,
        "LEASE_LOST",
        f"task '{task_id}' is no longer leased to this worker (its lease expired, or it was "
        "finished, cancelled or handed back)",
    )


def conflict(code: str, message: str) -> ApiError:
    """409 with `code`."""
    return ApiError(409, code, message)
