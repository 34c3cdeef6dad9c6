"""`/api/health/`, `/api/health/ready`, `/api/health/live` (Buntime's API)."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint
from quart_schema import document_response, tag

from .. import __version__
from . import current_generation, current_runtime

blueprint = Blueprint("health", __name__, url_prefix="/api/health")


class HealthStatus(BaseModel):
    """A health probe's answer."""

    ok: bool
    status: str
    version: str


class InstanceDetails(BaseModel):
    """Which instance answered (setting `health_details`): its id, its serving
    generation, and the last change of the shared store it applied."""

    id: str
    generation: int
    revision: int


class HealthDetails(HealthStatus):
    """The health of the runtime, with the instance's details when the `health_details`
    setting asks for them."""

    instance: InstanceDetails | None = None


class ReadyStatus(HealthStatus):
    """The readiness probe's answer: with `unavailable`, what fails, by dependency."""

    unavailable: dict[str, str] | None = None


def _status(ok: bool, status: str) -> tuple[dict[str, object], int]:
    return {"ok": ok, "status": status, "version": __version__}, 200 if ok else 503


@blueprint.get("/")
@tag(["health"])
@document_response(HealthDetails)
async def health() -> tuple[dict[str, object], int]:
    """Overall health of the runtime; with the `health_details` setting, which instance
    answered."""
    body, status = _status(True, "healthy")
    runtime = current_runtime()
    if current_generation().settings.health_details:
        body["instance"] = {
            "id": runtime.replication.instance,
            "generation": current_generation().number,
            "revision": runtime.replication.applied,
        }
    return body, status


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
