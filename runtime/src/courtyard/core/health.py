"""`/api/health/`, `/api/health/ready`, `/api/health/live` (Buntime's API)."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint
from quart_schema import document_response, tag

from .. import __version__
from . import current_runtime

blueprint = Blueprint("health", __name__, url_prefix="/api/health")


class HealthStatus(BaseModel):
    """A health probe's answer."""

    ok: bool
    status: str
    version: str


class ReadyStatus(HealthStatus):
    """The readiness probe's answer: with `unavailable`, what fails, by dependency."""

    unavailable: dict[str, str] | None = None


def _status(ok: bool, status: str) -> tuple[dict[str, object], int]:
    return {"ok": ok, "status": status, "version": __version__}, 200 if ok else 503


@blueprint.get("/")
@tag(["health"])
@document_response(HealthStatus)
async def health() -> tuple[dict[str, object], int]:
    """Overall health of the runtime."""
    return _status(True, "healthy")


@blueprint.get("/ready")
@tag(["health"])
@document_response(ReadyStatus)
@document_response(ReadyStatus, 503)
async def ready() -> tuple[dict[str, object], int]:
    """Readiness probe: 200 once a generation serves; 503 while starting or stopping, or
    while the database, Redis or the data folder's disk fails (status `unavailable`, and
    what fails in `unavailable`)."""
    runtime = current_runtime()
    if runtime.state != "ready":
        return _status(False, runtime.state)
    if problems := await runtime.services.readiness.problems():
        body, status = _status(False, "unavailable")
        return {**body, "unavailable": problems}, status
    return _status(True, "ready")


@blueprint.get("/live")
@tag(["health"])
@document_response(HealthStatus)
async def live() -> tuple[dict[str, object], int]:
    """Liveness probe: 200 while the process serves."""
    return _status(True, "live")
