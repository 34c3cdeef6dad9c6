"""The page at the plugin's base (`/runners/`): runners with status and load, a runner's
jobs, and a job's live log (followed with `EventSource` on the logs stream). Everything
shown is escaped; the page reads the API with the visitor's own credentials."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds

from . import views
from .formats import iso
from .routes import refuse_unusable
from .service import Service

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1f24}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;min-width:40rem}
th,td{border-bottom:1px solid #d0d7de;padding:.35rem .7rem;text-align:left}
th{background:#f6f8fa}.empty{color:#57606a}
.active,.completed{color:#1a7f37}.inactive,.cancelled{color:#57606a}
.error,.failed,.timed_out{color:#cf222e}.running,.queued{color:#9a6700}
pre{background:#0d1117;color:#e6edf3;padding:1rem;max-height:40rem;overflow:auto}
.warn{color:#d29922}.err{color:#ff7b72}.debug{color:#8b949e}
"""

LIVE = """
<script>
const log = document.getElementById("log");
const url = log.dataset.url;
const source = new EventSource(url);
source.onmessage = (e) => {
  const entry = JSON.parse(e.data);
  const line = document.createElement("div");
  line.className = entry.level === "error" ? "err" : entry.level;
  const step = entry.context.step || "-";
  line.textContent = `${entry.timestamp} ${entry.level} [${step}] ${entry.message}`;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
};
</script>
"""


def _page(title: str, content: str) -> Response:
    html = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{content}</body></html>"
    )
    return Response(html, content_type="text/html; charset=utf-8")


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(value: Any, css: str = "") -> str:
    klass = f' class="{escape(css)}"' if css else ""
    return f"<td{klass}>{escape('' if value is None else str(value))}</td>"


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
                f'<tr><td><a href="{escape(item["id"])}">{escape(item["name"])}</a></td>'
                + _cell(item["type"])
                + _cell(item["status"], item["status"])
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
        return _page("Runners", table)

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
                f'<tr><td><a href="{escape(runner_id)}/jobs/{escape(item["job_id"])}">'
                f"{escape(item['name'])}</a></td>"
                + _cell(item["status"], item["status"])
                + _cell(item["created_at"])
                + _cell(item["duration"])
                + _cell(item["exit_code"])
                + _cell(item["attempt"])
                + "</tr>"
            )
        info = views.runner(row)
        summary = (
            f'<p>{escape(info["type"])} runner, <span class="{escape(info["status"])}">'
            f"{escape(info['status'])}</span>, last seen {escape(str(iso(row['last_heartbeat'])))}"
            f"; {total} job(s).</p>"
        )
        table = _table(
            ["Job", "Status", "Created", "Duration (s)", "Exit code", "Attempt"],
            lines,
            "No job yet.",
        )
        return _page(f"Runner {info['name']}", summary + table)

    @bp.get("/<runner_id>/jobs/<job_id>")
    @responds(200, "A job's live log", media_type="text/html")
    @require("runners:read")
    async def job_page(runner_id: str, job_id: str) -> Response:
        """A job and its log, followed live."""
        job = views.job(await service().job(runner_id, job_id))
        url = f"/api/runners/{runner_id}/logs?follow=true&job_id={job_id}&limit=1000"
        content = (
            f'<p>Status <span class="{escape(job["status"])}">{escape(job["status"])}</span>'
            f", exit code {escape(str(job['exit_code']))}.</p>"
            f'<pre id="log" data-url="{escape(url)}"></pre>{LIVE}'
        )
        return _page(f"Job {job['name']}", content)

    return bp
