"""Pages for people: the queues and workers at the plugin's base (`/queues/`), rendered
with `courtyard_sdk.pages` (native in the operator console), and Swagger UI at
`/swagger/index.html` (runqy's address) over the runtime's own OpenAPI document,
`/api/openapi.json`. Everything shown is escaped."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds
from courtyard_sdk.pages import page, table
from quart import abort, redirect, send_file

from . import formats
from .service import QueueService


async def overview(service: QueueService) -> str:
    """The page's content: every queue with its counts and state, every worker."""
    entries = await service.registry.entries()
    owners = {full: e for e in entries.values() for full in e.config.full_names}
    names = sorted(owners.keys() | set(await service.store.queues()))
    stats = await service.store.stats(names)
    queue_rows = []
    for name in names:
        item = formats.queue(stats[name], owners.get(name))
        state = '<span class="badge warn">paused</span>' if item["paused"] else "running"
        counts = [
            item[k] for k in ("pending", "active", "scheduled", "retry", "archived", "completed")
        ]
        queue_rows.append(
            [escape(name), escape(str(item.get("priority", "-"))), state]
            + [escape(str(count)) for count in [*counts, item["processed"]]]
        )
    now = await service.store.now()
    worker_rows = []
    for worker in await service.store.workers():
        item = formats.worker(worker, now, service.options.stale_after)
        status = escape(item["status"])
        if item["is_stale"]:
            status += ' <span class="badge warn">stale</span>'
        beat = formats.timestamp(worker.last_beat) or "-"
        worker_rows.append(
            [
                escape(item["worker_id"]),
                escape(item["queues"]),
                status,
                escape(beat),
                str(len(item["active_tasks"])),
            ]
        )
    queues_table = table(
        [
            "Queue",
            "Priority",
            "State",
            "Pending",
            "Active",
            "Scheduled",
            "Retry",
            "Archived",
            "Completed",
            "Processed",
        ],
        queue_rows,
        "No queues are configured yet.",
    )
    workers_table = table(
        ["Worker", "Queue", "Status", "Last heartbeat", "Active tasks"],
        worker_rows,
        "No worker has registered lately.",
    )
    return f"{queues_table}<h2>Workers</h2>{workers_table}"


def swagger_page(script: str, css: str) -> str:
    """Swagger UI over the runtime's OpenAPI document."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Courtyard API - Swagger UI</title>"
        f'<link rel="stylesheet" href="{escape(css, quote=True)}"></head><body>'
        '<div id="swagger-ui"></div>'
        f'<script src="{escape(script, quote=True)}"></script>'
        "<script>window.ui = SwaggerUIBundle({url: '/api/openapi.json', "
        "dom_id: '#swagger-ui'});</script></body></html>"
    )


def page_routes(service: Callable[[], QueueService]) -> Blueprint:
    """The overview at the plugin's base."""
    bp = Blueprint("pages", __name__)

    @bp.get("/")
    @responds(200, "The page", media_type="text/html")
    @require("queues:read")
    async def index() -> Response:
        """The queues, their counts and state, and the workers."""
        return page("Queues", await overview(service()))

    return bp


LOCAL_FILES = {"script": "swagger-ui-bundle.js", "css": "swagger-ui.css"}


def _local(value: str) -> Path | None:
    """The file a setting names, when it is a path rather than a URL."""
    if value.startswith(("http://", "https://", "/")) and not Path(value).is_file():
        return None
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"plugin queues: swagger file {path} does not exist")
    return path


def swagger_routes(script: str, css: str) -> Blueprint:
    """`/swagger/index.html`, and `/swagger` sending there. `script` and `css` are URLs,
    or files served from `/swagger/` (for installs without Internet access).

    :raises FileNotFoundError: for a file that does not exist.
    """
    bp = Blueprint("swagger", __name__, url_prefix="/swagger")
    files = {
        LOCAL_FILES[kind]: path
        for kind, value in (("script", script), ("css", css))
        if (path := _local(value)) is not None
    }
    html = swagger_page(
        f"/swagger/{LOCAL_FILES['script']}" if LOCAL_FILES["script"] in files else script,
        f"/swagger/{LOCAL_FILES['css']}" if LOCAL_FILES["css"] in files else css,
    )

    @bp.get("/<any('swagger-ui-bundle.js', 'swagger-ui.css'):name>")
    @responds(200, "The file (a script or a style sheet)", media_type="application/octet-stream")
    async def swagger_file(name: str) -> Any:
        """A Swagger UI file configured as a local path."""
        if name not in files:
            abort(404)
        return await send_file(files[name])

    @bp.get("/index.html")
    @responds(200, "Swagger UI over /api/openapi.json", media_type="text/html")
    async def swagger() -> Response:
        """Swagger UI."""
        return Response(html, content_type="text/html; charset=utf-8")

    @bp.get("/")
    @responds(302, "To /swagger/index.html", media_type=None, headers={"Location": "Where"})
    async def swagger_root() -> Any:
        """To the Swagger UI page."""
        return redirect("/swagger/index.html")

    return bp
