"""The page at the plugin's base (`/runners/`): runners with status and load, a runner's
jobs, and a job's live log (followed with `EventSource` on the logs stream, by the
plugin's script `page.js`). Rendered with `courtyard_sdk.pages` (native in the operator
console); everything shown is escaped; the page reads the API with the visitor's own
credentials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds
from courtyard_sdk.pages import escape, page
from quart import request

from . import views
from .formats import iso
from .routes import refuse_unusable
from .service import Service

LIVE = """
(() => {
  "use strict";
  const log = document.getElementById("log");
  if (!log || log.dataset.following) return;
  log.dataset.following = "yes";
  const source = new EventSource(log.dataset.url);
  source.onmessage = (e) => {
    if (!document.body.contains(log)) { source.close(); return; }  // the page was left
    const entry = JSON.parse(e.data);
    const line = document.createElement("div");
    line.className = entry.level === "error" ? "error" : entry.level === "warn" ? "warn" : "";
    const step = entry.context.step || "-";
    line.textContent = `${entry.timestamp} ${entry.level} [${step}] ${entry.message}`;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  };
})();
"""
SCRIPT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


_TONES = {
    "active": "ok",
    "completed": "ok",
    "error": "bad",
    "failed": "bad",
    "timed_out": "bad",
    "running": "warn",
    "queued": "warn",
}


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _status(value: Any) -> str:
    """A status as a badge, coloured by what it means."""
    text = "" if value is None else str(value)
    tone = _TONES.get(text, "muted")
    return f'<span class="badge {tone}">{escape(text)}</span>'


def _cell(value: Any, status: bool = False) -> str:
    return f"<td>{_status(value) if status else escape(value)}</td>"


def blueprint(service: Callable[[], Service]) -> Blueprint:
    """`/runners/`, `/runners/<id>` and `/runners/<id>/jobs/<job_id>`."""
    bp = Blueprint("page", __name__)
    bp.before_request(refuse_unusable)

    @bp.get("/")
    @responds(200, "The runners", media_type="text/html")
    @require("runners:read")
    async def index() -> Response:
        """Every runner with its status and load."""
        rows, _ = await service().runners()
        lines = []
        for row in rows:
            item = views.runner(row)
            load = item["current_load"]
            lines.append(
                f'<tr><td><a href="{escape(request.path + item["id"])}">'
                f"{escape(item['name'])}</a></td>"
                + _cell(item["type"])
                + _cell(item["status"], status=True)
                + _cell(item["state"])
                + _cell(load["active_jobs"])
                + _cell(f"{load['cpu_usage']:.1f} %")
                + _cell(f"{load['memory_usage']:.1f} %")
                + _cell(item["metadata"]["last_seen"] or "never")
                + "</tr>"
            )
        table = _table(
            ["Runner", "Type", "Status", "State", "Jobs", "CPU", "Memory", "Last seen"],
            lines,
            "No runner registered yet: courtyard runner register --url ... --name ...",
        )
        return page("Runners", table)

    @bp.get("/<runner_id>")
    @responds(200, "A runner's jobs", media_type="text/html")
    @require("runners:read")
    async def runner_page(runner_id: str) -> Response:
        """A runner and its latest jobs."""
        svc = service()
        row = await svc.runner(runner_id)
        jobs, total = await svc.jobs(runner_id, None, 100, 0)
        lines = []
        for job in jobs:
            item = views.job(job)
            lines.append(
                f'<tr><td><a href="{escape(request.path)}/jobs/{escape(item["job_id"])}">'
                f"{escape(item['name'])}</a></td>"
                + _cell(item["status"], status=True)
                + _cell(item["created_at"])
                + _cell(item["duration"])
                + _cell(item["exit_code"])
                + _cell(item["attempt"])
                + "</tr>"
            )
        info = views.runner(row)
        summary = (
            f"<p>{escape(info['type'])} runner, {_status(info['status'])}, last seen "
            f"{escape(str(iso(row['last_heartbeat'])))}; {total} job(s).</p>"
        )
        table = _table(
            ["Job", "Status", "Created", "Duration (s)", "Exit code", "Attempt"],
            lines,
            "No job yet.",
        )
        return page(f"Runner {info['name']}", summary + table)

    @bp.get("/<runner_id>/jobs/<job_id>")
    @responds(200, "A job's live log", media_type="text/html")
    @require("runners:read")
    async def job_page(runner_id: str, job_id: str) -> Response:
        """A job and its log, followed live."""
        job = views.job(await service().job(runner_id, job_id))
        url = f"/api/runners/{runner_id}/logs?follow=true&job_id={job_id}&limit=1000"
        content = (
            f"<p>Status {_status(job['status'])}, exit code {escape(str(job['exit_code']))}.</p>"
            f'<pre id="log" class="log" data-url="{escape(url)}"></pre>'
        )
        return page(f"Job {job['name']}", content, scripts=[_script_path()])

    @bp.get("/page.js")
    @responds(200, "The job page's script (follows the log)", media_type="text/javascript")
    async def script() -> Response:
        """The script of the job page."""
        return Response(LIVE, headers=SCRIPT_HEADERS, content_type="text/javascript; charset=utf-8")

    def _script_path() -> str:
        """`page.js` beside the pages, wherever the plugin's base is."""
        base = request.path.split("/")
        return "/".join(base[: len(base) - 3]) + "/page.js"

    return bp
