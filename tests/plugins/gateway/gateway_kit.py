"""What the gateway tests share: the plugin's folder and a plugin with routes to limit."""

from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[3] / "plugins" / "gateway" / "src" / "courtyard_gateway"

ROUTES = """\
from courtyard_sdk import Blueprint, hookimpl


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("svc", __name__, url_prefix="/svc")

    @bp.route("/runners/<runner>/status", methods=["GET", "POST"])
    async def status(runner):
        return {"runner": runner}

    @bp.post("/register")
    async def register():
        return {"ok": True}

    @bp.get("/open")
    async def open_():
        return {"ok": True}

    @bp.get("/items")
    async def items():
        return {"ok": True}

    return bp
"""
