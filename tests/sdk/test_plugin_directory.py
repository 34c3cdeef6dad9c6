"""`ctx.plugins` and `current_plugin()`: what a plugin may know of the others."""

from __future__ import annotations

from courtyard.testing import write_plugin
from courtyard_sdk.plugins import current_plugin

WATCHER = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.plugins import current_plugin

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("watcher", __name__)

    @bp.get("/")
    async def index():
        broken = ctx.plugins.get("broken")
        return {
            "plugins": [(p.name, str(p.status)) for p in ctx.plugins.list()],
            "broken": broken.error if broken else None,
            "serving": current_plugin(),
        }

    return bp
"""


async def test_a_plugin_reads_the_directory_and_who_serves(courtyard, plugin_dir):
    write_plugin(plugin_dir, "watcher", "", WATCHER)
    write_plugin(plugin_dir, "broken", "", "raise RuntimeError('no good')\n")
    rt = await courtyard(entry_points=False)
    answer = (await rt.client.get("/watcher/")).json()
    assert sorted(map(tuple, answer["plugins"])) == [("broken", "failed"), ("watcher", "loaded")]
    assert "no good" in answer["broken"]
    assert answer["serving"] == "watcher"


def test_outside_a_request_no_plugin_serves() -> None:
    assert current_plugin() is None
