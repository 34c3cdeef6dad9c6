"""OpenAPI 3.1 for the core and every plugin's routes; the Scalar docs page."""

from courtyard_sdk.testing import write_plugin
from openapi_spec_validator import validate

PLUGIN = """
from pydantic import BaseModel
from quart_schema import validate_request, validate_response
from courtyard_sdk import Blueprint, hookimpl

class Note(BaseModel):
    text: str

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.post("/")
    @validate_request(Note)
    @validate_response(Note, 201)
    async def add(data: Note):
        \"\"\"Add a note.\"\"\"
        return data, 201

    return bp
"""


async def test_spec_is_valid_and_lists_plugin_routes_with_a_tag(courtyard, plugin_dir):
    write_plugin(plugin_dir, "notes", 'description = "Keeps notes."\n', PLUGIN)
    rt = await courtyard(entry_points=False)
    spec = (await rt.client.get("/api/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    for path in (
        "/api/health/",
        "/api/health/ready",
        "/api/plugins/",
        "/api/plugins/loaded",
        "/api/plugins/reload",
        "/api/plugins/{name}",
    ):
        assert path in spec["paths"], path
    operation = spec["paths"]["/notes/"]["post"]
    assert operation["tags"] == ["notes"]
    assert operation["summary"] == "Add a note."
    assert "201" in operation["responses"]
    assert {"name": "notes", "description": "Keeps notes."} in spec["tags"]


async def test_plugin_request_validation_answers_400(courtyard, plugin_dir):
    write_plugin(plugin_dir, "notes", "", PLUGIN)
    rt = await courtyard(entry_points=False)
    good = await rt.client.post("/notes/", json={"text": "hi"})
    assert good.status_code == 201 and good.json() == {"text": "hi"}
    bad = await rt.client.post("/notes/", json={"nope": 1})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_docs_page_renders_scalar_with_a_pinned_script(courtyard):
    rt = await courtyard(entry_points=False)
    page = await rt.client.get("/api/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "/api/openapi.json" in page.text
    assert "@scalar/api-reference@" in page.text


async def test_docs_script_can_be_served_from_a_local_file(courtyard, tmp_path):
    script = tmp_path / "scalar.js"
    script.write_text("console.log('offline scalar')")
    rt = await courtyard(entry_points=False, docs_script=str(script))
    page = await rt.client.get("/api/docs")
    assert 'src="/api/docs/scalar.js"' in page.text
    served = await rt.client.get("/api/docs/scalar.js")
    assert served.status_code == 200
    assert served.text == "console.log('offline scalar')"
    assert "javascript" in served.headers["content-type"]


async def test_docs_script_can_be_another_url(courtyard):
    rt = await courtyard(entry_points=False, docs_script="https://example.test/scalar.js")
    assert "https://example.test/scalar.js" in (await rt.client.get("/api/docs")).text
