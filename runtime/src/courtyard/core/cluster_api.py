"""`/api/cluster/`: the instances serving from the shared store, as this one sees them
(services/store.py, docs/deployment.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from courtyard_sdk.identity import require
from pydantic import BaseModel
from quart import Blueprint
from quart_schema import document_response, tag

from ..services.store import Instance
from . import current_runtime

blueprint = Blueprint("cluster", __name__, url_prefix="/api/cluster")

SEEN_WITHIN = 30.0  # seconds: instances not seen for longer are gone, not listed


class InstanceView(BaseModel):
    """An instance as it last reported itself."""

    id: str
    host: str
    pid: int
    state: str
    generation: int
    revision: int
    lag: int
    """Changes logged that it has not applied yet."""
    entryPoints: dict[str, str]
    """The plugins of installed distributions it serves (name: version): each instance's
    own business, not replicated."""
    failed: list[str]
    """The plugins its serving generation excluded (GET /api/plugins/ on it says why)."""
    startedAt: datetime
    seenAt: datetime


class ClusterView(BaseModel):
    """The instances seen in the last 30 seconds."""

    instance: str
    """The id of the instance answering."""
    revision: int
    """The latest change in the shared store."""
    instances: list[InstanceView]


def _view(instance: Instance, head: int) -> InstanceView:
    return InstanceView(
        id=instance.id,
        host=instance.host,
        pid=instance.pid,
        state=instance.state,
        generation=instance.generation,
        revision=instance.revision,
        lag=max(0, head - instance.revision),
        entryPoints=instance.entry_points,
        failed=instance.failed,
        startedAt=instance.started_at,
        seenAt=instance.seen_at,
    )


@blueprint.get("/")
@tag(["cluster"])
@document_response(ClusterView)
@require("cluster:read")
async def cluster() -> dict[str, Any]:
    """The instances that share this one's database, their serving generation, the
    change they have applied, and how many changes they lag behind."""
    runtime = current_runtime()
    store = runtime.services.store
    head = await store.head()
    instances = await store.instances(SEEN_WITHIN)
    return ClusterView(
        instance=store.instance,
        revision=head,
        instances=[_view(i, head) for i in instances],
    ).model_dump(mode="json")
