"""`current_request_id()`: the id a plugin reads is the one the runtime answers with."""

from __future__ import annotations

from courtyard.testing import write_plugin
from courtyard_sdk import current_request_id

ECHO = """
from courtyard_sdk import Blueprint, current_request_id, hookimpl

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("ids", __name__)

    @bp.get("/")
    async def index():
        return {"requestId": current_request_id()}

    return bp
"""


async def test_a_plugin_reads_the_request_id_it_is_answered_with(courtyard, plugin_dir):
    write_plugin(plugin_dir, "ids", "", ECHO)
    rt = await courtyard(entry_points=False)
    own = await rt.client.get("/ids/", headers={"X-Request-Id": "client-chosen-42"})
    assert (
        own.json()
        == {"requestId": "client-chosen-42"}
        == {"requestId": own.headers["X-Request-Id"]}
    )
    made = await rt.client.get("/ids/")
    assert made.json()["requestId"] == made.headers["X-Request-Id"] != "client-chosen-42"


def test_outside_a_request_there_is_none() -> None:
    assert current_request_id() is None
