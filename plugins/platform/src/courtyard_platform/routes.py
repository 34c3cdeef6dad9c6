"""The go-web-nats platform API's endpoints, at the paths its contract gives.

Permissions: `platform:read` for reads, `platform:write` for everything that changes
state (the built-in `viewer` and `editor` roles cover them). Origin: the source webhook
is posted by git hooks and CI systems with curl, and deployment and promotion events by
delivery pipelines, so those three accept programs without an `Origin` header; the
projects endpoints and registration events are the frontend's and keep the runtime's
Origin check (programs send `X-Courtyard-Internal: true` or a key).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from courtyard_sdk import ApiError, Blueprint, Response, allow_without_origin, sse_response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors as answers
from courtyard_sdk.openapi import responds
from quart import jsonify, request
from quart_schema import document_request, document_response

from . import bodies
from .artifacts import Artifacts
from .service import WEBHOOK, Platform, SpecRefused, checked_spec, invalid
from .store import is_id

MAX_BODY = 1024 * 1024
CHUNK = 256 * 1024


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json() -> Any:
    """The request's JSON body. :raises ApiError: 400 VALIDATION_ERROR for a body that
    is missing, not JSON, `text/plain` (what a form on another site can post), or holds
    `NaN`, infinities or nesting too deep to read."""
    if request.mimetype == "text/plain":
        raise invalid("send the body as application/json, not text/plain")
    data = await request.get_data(as_text=False)
    if not data.strip():
        raise invalid("a JSON body is required")
    if len(data) > MAX_BODY:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is larger than {MAX_BODY} bytes")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid("the body is not valid JSON") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid("the body is not valid JSON")
    return value


def spec_error(refused: SpecRefused) -> Response:
    """400 INVALID_SPEC listing every violation with its field path."""
    body = {
        "error": {
            "code": "INVALID_SPEC",
            "message": f"the spec breaks {len(refused.violations)} rule(s): {refused}",
            "violations": [v.to_json() for v in refused.violations],
        }
    }
    return Response(json.dumps(body), status=400, content_type="application/json")


def base_url() -> str:
    """The address this request reached the server at (for the source repo's hook)."""
    return request.host_url.rstrip("/")


def api_routes(platform: Callable[[], Platform], artifacts: Artifacts, events: Any) -> Blueprint:
    """Every endpoint of the go-web-nats platform API."""
    bp = Blueprint("platform_api", __name__, url_prefix="/api")
    answers((503, "QUEUES_UNAVAILABLE"))(bp)

    # Projects -----------------------------------------------------------------------------

    @bp.get("/projects")
    @responds(200, "Every project, oldest first", schema={"type": "array"})
    @require("platform:read")
    async def list_projects() -> Response:
        """List projects."""
        return jsonify(await platform().store.projects())

    @bp.post("/projects")
    @answers((400, "INVALID_SPEC"), (409, "PROJECT_NAME_TAKEN"))
    @document_request(bodies.ProjectSpec)
    @document_response(bodies.Project)
    @require("platform:write")
    async def create_project() -> Any:
        """Create a project from a `ProjectSpec` and start its `create` operation."""
        try:
            spec = checked_spec(await read_json())
        except SpecRefused as refused:
            return spec_error(refused)
        accepted = await platform().create(spec, base_url())
        return accepted.project

    @bp.get("/projects/<project_id>")
    @answers((404, "PROJECT_NOT_FOUND"))
    @document_response(bodies.Project)
    @require("platform:read")
    async def get_project(project_id: str) -> Any:
        """A project."""
        return await platform().store.project(project_id)

    @bp.put("/projects/<project_id>")
    @answers((400, "INVALID_SPEC"), (404, "PROJECT_NOT_FOUND"), (409, "OP_IN_PROGRESS"))
    @document_request(bodies.ProjectSpec)
    @document_response(bodies.Project)
    @require("platform:write")
    async def update_project(project_id: str) -> Any:
        """Replace a project's spec and start its `update` operation."""
        try:
            spec = checked_spec(await read_json())
        except SpecRefused as refused:
            return spec_error(refused)
        accepted = await platform().update(project_id, spec, base_url())
        return accepted.project

    @bp.delete("/projects/<project_id>")
    @answers((404, "PROJECT_NOT_FOUND"), (409, "OP_IN_PROGRESS"))
    @document_response(bodies.Project)
    @require("platform:write")
    async def delete_project(project_id: str) -> Any:
        """Start a project's `delete` operation (the project, phase `Deleting`, is gone
        once it is done)."""
        accepted = await platform().delete(project_id, base_url())
        return accepted.project

    @bp.get("/projects/<project_id>/ops")
    @answers((404, "PROJECT_NOT_FOUND"))
    @responds(200, "The project's latest operations, newest first", schema={"type": "object"})
    @require("platform:read")
    async def project_ops(project_id: str) -> Any:
        """A project's latest 20 operations (Courtyard's addition, for the page)."""
        await platform().store.project(project_id)
        return {"ops": await platform().store.project_ops(project_id)}

    # Events -------------------------------------------------------------------------------

    @bp.post("/events/registration")
    @answers((400, "INVALID_SPEC"), (404, "PROJECT_NOT_FOUND"), (409, "OP_IN_PROGRESS"),
             (409, "PROJECT_NAME_TAKEN"))  # fmt: skip
    @document_request(bodies.Registration)
    @responds(200, "`{project, op, final}`, or `{deleted, op, final}` for a delete")
    @require("platform:write")
    async def registration() -> Any:
        """Create, update or delete a project and wait for the operation."""
        try:
            return await platform().registration(await read_json(), base_url())
        except SpecRefused as refused:
            return spec_error(refused)

    @bp.post("/events/deployment")
    @answers((404, "PROJECT_NOT_FOUND"), (409, "OP_IN_PROGRESS"))
    @allow_without_origin
    @document_request(bodies.Deployment)
    @document_response(bodies.Outcome)
    @require("platform:write")
    async def deployment() -> Any:
        """Deploy the latest build to dev and wait for the operation."""
        return await platform().deployment(await read_json(), base_url())

    @bp.post("/events/promotion")
    @answers((404, "PROJECT_NOT_FOUND"), (409, "OP_IN_PROGRESS"), (409, "NOT_DEPLOYED"))
    @allow_without_origin
    @document_request(bodies.Promotion)
    @document_response(bodies.Outcome)
    @require("platform:write")
    async def promotion() -> Any:
        """Promote the image one environment runs to another and wait for the operation."""
        return await platform().promotion(await read_json(), base_url())

    @bp.post("/webhooks/source")
    @allow_without_origin
    @document_request(bodies.SourceEvent)
    @document_response(bodies.SourceOutcome, 202)
    @require("platform:write")
    async def source_webhook() -> Any:
        """A commit on the source repository: CI for `main`, once per commit (always 202)."""
        return await platform().source(await read_json(), WEBHOOK, base_url()), 202

    # Operations ---------------------------------------------------------------------------

    async def known_op(op_id: str) -> dict[str, Any]:
        if not is_id(op_id):
            raise ApiError(400, "INVALID_OP_ID", "an operation id is 32 lowercase hex digits")
        op = await platform().store.op(op_id)
        if op is None:
            raise ApiError(404, "OP_NOT_FOUND", f"operation {op_id!r} not found")
        return op

    @bp.get("/ops/<op_id>")
    @answers((400, "INVALID_OP_ID"), (404, "OP_NOT_FOUND"))
    @document_response(bodies.Operation)
    @require("platform:read")
    async def get_op(op_id: str) -> Any:
        """An operation with every step, its worker, status, times, message and artifacts."""
        return await known_op(op_id)

    @bp.get("/ops/<op_id>/events")
    @answers((400, "INVALID_OP_ID"), (404, "OP_NOT_FOUND"))
    @responds(200, "The operation's progress: one `platform.op` event per change, its data "
              "the whole operation", media_type="text/event-stream")  # fmt: skip
    @require("platform:read")
    async def op_events(op_id: str) -> Response:
        """Server-Sent Events: the operation after each change (held ones replayed first)."""
        await known_op(op_id)
        resume = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        return sse_response(events, f"platform.op.{op_id}", last_event_id=resume or "0-0")

    # Artifacts ----------------------------------------------------------------------------

    @bp.get("/projects/<project_id>/artifacts")
    @answers((404, "PROJECT_NOT_FOUND"))
    @document_response(bodies.Files)
    @require("platform:read")
    async def list_artifacts(project_id: str) -> Any:
        """The project's artifacts (relative paths; repositories without `.git`)."""
        await platform().store.project(project_id)
        return {"files": await asyncio.to_thread(artifacts.files, project_id)}

    # `path` on the id too: an id with a slash still reaches this route and answers
    # PROJECT_NOT_FOUND (its non-greedy match ends at the first `/artifacts/`).
    @bp.get("/projects/<path:project_id>/artifacts/<path:path>")
    @answers((400, "INVALID_PATH"), (404, "PROJECT_NOT_FOUND"), (404, "ARTIFACT_NOT_FOUND"))
    @responds(200, "The file", media_type="application/octet-stream",
              headers={"Content-Disposition": 'attachment; filename="<base>"'})  # fmt: skip
    @require("platform:read")
    async def get_artifact(project_id: str, path: str) -> Response:
        """One artifact, as a download."""
        await platform().store.project(project_id)
        target = await asyncio.to_thread(artifacts.resolve, project_id, path)
        name = target.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        handle = await asyncio.to_thread(target.open, "rb")
        size = os.fstat(handle.fileno()).st_size

        async def chunks() -> AsyncIterator[bytes]:
            # Streamed: a build's image can be far larger than what memory should hold.
            try:
                while chunk := await asyncio.to_thread(handle.read, CHUNK):
                    yield chunk
            finally:
                handle.close()

        return Response(
            chunks(),
            status=200,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Length": str(size),
                "X-Content-Type-Options": "nosniff",
            },
        )

    return bp
