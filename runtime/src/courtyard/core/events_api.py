"""`GET /api/stream`: the event bus as Server-Sent Events (see docs/events.md).

Not `/api/events`: go-web-nats' platform API gives plugins `POST /api/events/<kind>` (webhooks in).
"""

from __future__ import annotations

from courtyard_sdk import ApiError
from courtyard_sdk.events import sse_response
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors, responds
from pydantic import BaseModel
from quart import Blueprint, Response, request
from quart_schema import document_querystring, tag

from . import current_runtime

blueprint = Blueprint("events", __name__)
MAX_PATTERNS = 32


class StreamQuery(BaseModel):
    """The query of `GET /api/stream`."""

    topics: str | None = None
    lastEventId: str | None = None  # the name EventSource clients know
    named: bool | None = None


@blueprint.get("/api/stream")
@tag(["events"])
@document_querystring(StreamQuery)
@responds(200, "The events, as they come", media_type="text/event-stream")
@errors((400, "INVALID_TOPIC_PATTERN"))
@require("events:read")
async def stream() -> Response:
    """Stream events as `text/event-stream`: `topics` is a comma-separated list of topic
    patterns (`*` by default); resume with the `Last-Event-ID` header or `lastEventId`;
    `named=false` sends every event as an unnamed message whose data is `{"id", "topic",
    "data", "time"}`. A caller acting for a tenant sees only that tenant's events."""
    topics = [t.strip() for t in request.args.get("topics", "*").split(",") if t.strip()]
    if not topics or len(topics) > MAX_PATTERNS:
        raise ApiError(
            400, "INVALID_TOPIC_PATTERN", f"give 1 to {MAX_PATTERNS} comma-separated patterns"
        )
    named = request.args.get("named", "true").strip().lower()
    if named not in ("true", "false"):
        raise ApiError(400, "VALIDATION_ERROR", "named: expected true or false")
    return sse_response(
        current_runtime().services.events,
        *topics,
        tenant=current_identity().tenant_id,
        named=named == "true",
    )
