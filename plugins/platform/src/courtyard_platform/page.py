"""The Projects page at the plugin's base (`/platform/`): every project with its
environments and deployments, its latest operations with live step progress (Server-Sent
Events of `GET /api/ops/{id}/events`), and its artifacts as downloads.

The page is a `courtyard_sdk.pages` fragment (native in the operator console) and one
script of the plugin's own (`/platform/page.js`), which reads the API with the visitor's
session; every value is set as text, never as markup.
"""

from __future__ import annotations

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds
from courtyard_sdk.pages import page
from quart import request

CONTENT = """
<p class="muted">The go-web-nats platform API's projects, operations and artifacts.</p>
<div id="projects"><p class="muted" role="status">Loading...</p></div>
"""
SCRIPT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

SCRIPT = r"""
(() => {
"use strict";
const root = document.getElementById("projects");
if (!root) return;
const streams = new Map();
const TONES = {done: "ok", error: "bad", running: "warn", queued: "warn"};

function badge(status) {
  return el("span", status, "badge " + (TONES[status] || "muted"));
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "";
    tr.appendChild(td);
  }
  return tr;
}

function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  for (const h of headers) {
    const th = el("th", h);
    th.scope = "col";
    head.appendChild(th);
  }
  t.appendChild(head);
  for (const r of rows) t.appendChild(r);
  const box = el("div", null, "scroll");
  box.appendChild(t);
  return box;
}

async function json(url) {
  const answer = await fetch(url, {credentials: "same-origin"});
  if (!answer.ok) throw new Error(url + ": " + answer.status);
  return answer.json();
}

function opTable(op) {
  const rows = op.steps.map((s) => row([
    s.worker, badge(s.status), s.started_at || "", s.ended_at || "",
    s.error || s.message, (s.artifacts || []).join(", "),
  ]));
  const box = el("div");
  box.id = "op-" + op.id;
  box.appendChild(el("h3", op.kind + " " + op.id + ": " + op.status));
  box.appendChild(table(["Worker", "Status", "Started", "Ended", "Message", "Artifacts"], rows));
  return box;
}

function follow(op) {
  if (op.status === "done" || op.status === "error" || streams.has(op.id)) return;
  const source = new EventSource("/api/ops/" + op.id + "/events");
  streams.set(op.id, source);
  source.addEventListener("platform.op." + op.id, (event) => {
    if (!document.body.contains(root)) { source.close(); return; }  // the page was left
    const fresh = JSON.parse(event.data);
    const old = document.getElementById("op-" + fresh.id);
    if (old) old.replaceWith(opTable(fresh));
    if (fresh.status === "done" || fresh.status === "error") {
      source.close();
      streams.delete(fresh.id);
      load();
    }
  });
}

async function section(project) {
  const box = el("section");
  box.appendChild(el("h2", project.spec.name + " (" + project.status.phase + ")"));
  box.appendChild(el("p", "id " + project.id + ", runtime " + project.spec.runtime +
    (project.status.message ? ", " + project.status.message : ""), "muted"));
  const envs = Object.keys(project.spec.environments);
  if (!envs.includes("dev")) envs.unshift("dev");
  box.appendChild(table(["Environment", "Image", "Operation"], envs.map((name) => {
    const d = project.deployments[name] || {};
    return row([name, d.image || "not deployed", d.op_id || ""]);
  })));
  const ops = (await json("/api/projects/" + project.id + "/ops")).ops.slice(0, 5);
  for (const op of ops) { box.appendChild(opTable(op)); follow(op); }
  const files = (await json("/api/projects/" + project.id + "/artifacts")).files;
  const list = el("ul");
  for (const file of files) {
    const a = el("a", file);
    a.href = "/api/projects/" + project.id + "/artifacts/" +
      file.split("/").map(encodeURIComponent).join("/");
    const li = el("li"); li.appendChild(a); list.appendChild(li);
  }
  box.appendChild(el("h3", "Artifacts"));
  box.appendChild(files.length ? list : el("p", "None.", "muted"));
  return box;
}

async function load() {
  try {
    const projects = await json("/api/projects");
    const parts = [];
    for (const project of projects) parts.push(await section(project));
    root.replaceChildren(...(parts.length ? parts : [el("p", "No projects yet.", "muted")]));
  } catch (error) {
    root.replaceChildren(el("p", String(error), "error"));
  }
}

load();
})();
"""


def page_routes() -> Blueprint:
    """`/platform/` and its script."""
    bp = Blueprint("platform_page", __name__)

    @bp.get("/")
    @responds(200, "The Projects page", media_type="text/html")
    @require("platform:read")
    async def index() -> Response:
        """Projects, their environments, operations (live) and artifacts."""
        return page("Projects", CONTENT, scripts=[f"{request.path}page.js"])

    @bp.get("/page.js")
    @responds(200, "The page's script", media_type="text/javascript")
    @require("platform:read")
    async def script() -> Response:
        """The page's script."""
        return Response(
            SCRIPT, headers=SCRIPT_HEADERS, content_type="text/javascript; charset=utf-8"
        )

    return bp
