"""OpenAPI 3.1 for the core and every plugin's routes (core/openapi.py); the Scalar docs
page and its script (core/docs_ui.py)."""

import base64
import hashlib
import json
from collections import Counter

import jsonschema
import pytest
from archive_kit import tar_file, tgz_bytes
from courtyard.core import docs_ui
from courtyard.core.openapi import ERROR_SCHEMA
from courtyard.testing import write_plugin
from courtyard_sdk.openapi import errors, responds
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

# Views named like the core's and other plugins' (`index`, `list_entries`), two
# blueprints with a view of one name, and a model named like a core model (nested: only
# nested models become components).
UPLOADED = """
from pydantic import BaseModel
from quart_schema import document_response
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.openapi import errors

class InstalledPlugin(BaseModel):
    mood: str

@hookimpl
def courtyard_routes(ctx):
    first = Blueprint("first", __name__)
    second = Blueprint("second", __name__, url_prefix="/clash/second")

    @first.get("/")
    async def index():
        return "<p>hi</p>"

    @first.get("/entries")
    @document_response(list[InstalledPlugin])
    @errors((404, "NOTHING_HERE"))
    async def list_entries():
        return [{"mood": "fine"}]

    @second.get("/")
    async def index():
        return "second"

    return [first, second]
"""


def _archive(name: str, code: str) -> bytes:
    return tgz_bytes(
        [
            tar_file(f"{name}/plugin.toml", f'name = "{name}"\nmodule = "plugin"\n'.encode()),
            tar_file(f"{name}/plugin.py", code.encode()),
        ]
    )


async def _everything(courtyard):
    """A runtime with every first-party plugin (entry points) and an uploaded plugin."""
    rt = await courtyard()
    uploaded = await rt.client.post(
        "/api/plugins/upload",
        files={"file": ("clash.tgz", _archive("clash", UPLOADED), "application/gzip")},
    )
    assert uploaded.status_code == 200, uploaded.text
    return rt


def _operations(spec):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


async def test_one_valid_document_for_every_plugin_and_an_uploaded_one(courtyard):
    rt = await _everything(courtyard)
    spec = (await rt.client.get("/api/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    ids = Counter(op["operationId"] for _, _, op in _operations(spec))
    assert [i for i, n in ids.items() if n > 1] == []
    by_route = {(m, p): op["operationId"] for p, m, op in _operations(spec)}
    # Owner-qualified: the core's, each plugin's.
    assert by_route["get", "/api/audit/"] == "core.get_list_entries"
    assert by_route["get", "/api/vaults/{name}/entries"] == "vaults.get_list_entries"
    assert by_route["get", "/vaults/"] == "vaults.get_index"
    assert by_route["get", "/queues/"] == "queues.get_index"
    assert by_route["get", "/clash/entries"] == "clash.get_list_entries"
    # One owner's two views named `index`: told apart by their blueprints.
    assert by_route["get", "/clash/"] == "clash.first.get_index"
    assert by_route["get", "/clash/second/"] == "clash.second.get_index"
    # One view on two rules: numbered.
    assert by_route["delete", "/api/apps/"] == "core.apps.delete_delete_without_params"
    assert by_route["delete", "/api/apps/{rest}"] == "core.apps.delete_delete_without_params_2"


async def test_every_served_route_is_listed(courtyard):
    rt = await _everything(courtyard)
    spec = (await rt.client.get("/api/openapi.json")).json()
    listed = {(m.upper(), p) for p, m, _ in _operations(spec)}
    app = rt.dispatcher.current.app
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Quart's, with no static folder: only 404s
            continue
        if rule.websocket:  # OpenAPI has no form for a WebSocket (the plugins' docs do)
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", f"{{{name}}}")
            for converter in ("path", "any('swagger-ui-bundle.js', 'swagger-ui.css')"):
                path = path.replace(f"<{converter}:{name}>", f"{{{name}}}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (method, path) in listed, (method, path)
    for path in ("/swagger/index.html", "/swagger/", "/api/openapi.json", "/api/docs"):
        assert ("GET", path) in listed, path
    assert ("GET", "/api/docs/scalar.js") in listed
    assert ("DELETE", "/api/apps/{rest}") in listed
    swagger = spec["paths"]["/swagger/index.html"]["get"]["responses"]["200"]
    assert "text/html" in swagger["content"]
    assert spec["paths"]["/swagger/"]["get"]["responses"].keys() >= {"302"}


async def test_request_bodies_and_success_statuses(courtyard):
    rt = await _everything(courtyard)
    spec = (await rt.client.get("/api/openapi.json")).json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for upload in ("/api/plugins/upload", "/api/apps/upload"):
        body = paths[upload]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["required"] == ["file"]
        assert body["properties"]["file"]["format"] == "binary"
    assert {p["name"] for p in paths["/api/apps/upload"]["post"]["parameters"]} == {"overwrite"}
    create = paths["/api/vaults"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["name"]
    assert set(create["responses"]) >= {"201", "400", "409", "503"} and "200" not in create
    entry = paths["/api/vaults/{name}/entries"]["post"]["requestBody"]["content"]
    assert set(entry["application/json"]["schema"]["properties"]) == {"key", "value", "is_secret"}
    config = paths["/api/cli/configs"]["post"]
    assert "201" in config["responses"] and "200" not in config["responses"]
    assert (
        "deployment" in config["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    dequeue = paths["/worker/dequeue"]["post"]["responses"]
    assert "content" not in dequeue["204"] and "200" in dequeue
    assert "201" in paths["/api/keys/"]["post"]["responses"]
    assert "text/event-stream" in paths["/api/stream"]["get"]["responses"]["200"]["content"]
    # The route that only explains a malformed path lists no success.
    assert set(paths["/api/plugins/"]["delete"]["responses"]) & {"200", "201", "204"} == set()
    # A plugin's models are its own: the uploaded `InstalledPlugin` leaves the core's alone.
    assert "mood" in schemas["clash.InstalledPlugin"]["properties"]
    assert "status" in schemas["InstalledPlugin"]["properties"]
    clash = paths["/clash/entries"]["get"]["responses"]["200"]["content"]["application/json"]
    assert clash["schema"]["items"] == {"$ref": "#/components/schemas/clash.InstalledPlugin"}


async def test_error_answers_are_listed_with_the_shared_envelope(courtyard):
    rt = await _everything(courtyard)
    spec = (await rt.client.get("/api/openapi.json")).json()
    paths, components = spec["paths"], spec["components"]
    for _, _, operation in _operations(spec):
        responses = operation["responses"]
        assert responses["default"] == {"$ref": "#/components/responses/Error"}
        assert {"401", "429"} <= responses.keys()
    upload = paths["/api/plugins/upload"]["post"]["responses"]
    assert {"400", "401", "403", "413", "422"} <= upload.keys()
    assert upload["413"]["$ref"] == "#/components/responses/RequestEntityTooLarge"
    assert "`ARCHIVE_TOO_LARGE`" in upload["413"]["description"]
    assert "`NO_FILE_PROVIDED`" in upload["400"]["description"]
    assert "`CSRF_FAILED`" in upload["403"]["description"]
    assert (
        "`VAULT_NOT_FOUND`" in paths["/api/vaults/{name}"]["get"]["responses"]["404"]["description"]
    )
    # Blueprint-wide declarations reach each route of the blueprint.
    assert (
        "`QUEUES_UNAVAILABLE`" in paths["/api/cli/queues"]["get"]["responses"]["503"]["description"]
    )
    assert "`NOTHING_HERE`" in paths["/clash/entries"]["get"]["responses"]["404"]["description"]
    # Guarded routes: credentials and permissions.
    reload_op = paths["/api/plugins/reload"]["post"]
    assert reload_op["x-permissions"] == ["plugins:reload"]
    assert reload_op["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in paths["/api/health/"]["get"]
    # A route's own HTML answer for a status the request path also answers (429 for
    # failed credentials, before the view runs): both bodies are listed.
    throttled = paths["/console/sign-in"]["post"]["responses"]["429"]["content"]
    assert throttled.keys() == {"text/html", "application/json"}
    assert throttled["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{ERROR_SCHEMA}"
    }
    # Every $ref'd response exists, and real error bodies match the envelope.
    for _, _, operation in _operations(spec):
        for answer in operation["responses"].values():
            if "$ref" in answer:
                assert answer["$ref"].rsplit("/", 1)[1] in components["responses"]
    envelope = components["schemas"][ERROR_SCHEMA]
    for url in ("/api/vaults/nope", "/api/plugins/", "/api/cli/queues/nope"):
        answer = await rt.client.request("DELETE" if url == "/api/plugins/" else "GET", url)
        assert answer.status_code >= 400
        assert (
            str(answer.status_code)
            in spec["paths"][url.replace("/nope", "/{name}" if "vaults" in url else "/{queue}")][
                "delete" if url == "/api/plugins/" else "get"
            ]["responses"]
        )
        jsonschema.validate(answer.json(), envelope)


async def test_the_document_is_built_once_per_generation(courtyard, plugin_dir):
    rt = await courtyard(entry_points=False)
    provider = rt.dispatcher.current.app.extensions["QUART_SCHEMA"].openapi_provider
    built = []
    build = provider._build
    provider._build = lambda: built.append(1) or build()
    first = await rt.client.get("/api/openapi.json")
    second = await rt.client.get("/api/openapi.json")
    assert len(built) == 1 and first.content == second.content
    assert first.headers["etag"] and "no-cache" in first.headers["cache-control"]
    again = await rt.client.get(
        "/api/openapi.json", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert provider.schema() == first.json() and provider.schema() is not provider.document()
    write_plugin(plugin_dir, "notes", "", PLUGIN)
    assert (await rt.reload()).status_code == 200
    fresh = await rt.client.get("/api/openapi.json")
    assert "/notes/" in fresh.json()["paths"] and fresh.headers["etag"] != first.headers["etag"]


async def test_plugin_routes_get_their_tag_and_summary(courtyard, plugin_dir):
    write_plugin(plugin_dir, "notes", 'description = "Keeps notes."\n', PLUGIN)
    rt = await courtyard(entry_points=False)
    spec = (await rt.client.get("/api/openapi.json")).json()
    validate(spec)
    operation = spec["paths"]["/notes/"]["post"]
    assert operation["tags"] == ["notes"] and operation["operationId"] == "notes.post_add"
    assert operation["summary"] == "Add a note."
    assert "201" in operation["responses"] and "200" not in operation["responses"]
    assert {"name": "notes", "description": "Keeps notes."} in spec["tags"]
    assert {"name": "health", "description": "Liveness and readiness probes"} in spec["tags"]


async def test_paths_with_a_variable_before_a_path_variable(courtyard, plugin_dir):
    code = (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('files', __name__)\n"
        "    @bp.get('/p/<pid>/f/<path:rest>')\n"
        "    async def one(pid, rest):\n"
        "        return {}\n"
        "    return bp\n"
    )
    write_plugin(plugin_dir, "files", "", code)
    rt = await courtyard(entry_points=False)
    document = (await rt.client.get("/api/openapi.json")).json()
    operation = document["paths"]["/files/p/{pid}/f/{rest}"]["get"]
    assert {p["name"] for p in operation["parameters"] if p["in"] == "path"} == {"pid", "rest"}


async def test_plugin_request_validation_answers_400(courtyard, plugin_dir):
    write_plugin(plugin_dir, "notes", "", PLUGIN)
    rt = await courtyard(entry_points=False)
    good = await rt.client.post("/notes/", json={"text": "hi"})
    assert good.status_code == 201 and good.json() == {"text": "hi"}
    bad = await rt.client.post("/notes/", json={"nope": 1})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"


def test_errors_and_responds_record_what_a_route_answers():
    @errors(400, (404, "A"))
    @errors((404, "B"), (404, "A"))
    @responds(204, "Nothing", media_type=None)
    async def view():
        pass

    assert view.__courtyard_errors__ == {404: ["B", "A"], 400: []}
    assert view.__courtyard_responses__ == {"204": {"description": "Nothing"}}
    with pytest.raises(ValueError, match="not an error status"):
        errors(200)


# -- the docs page and its script -----------------------------------------------------------


def _sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def test_the_vendored_scalar_build_matches_its_record():
    record = docs_ui.vendored()
    assert record["package"] == "@scalar/api-reference" and record["license"] == "MIT"
    script = (docs_ui.VENDORED / record["file"]).read_bytes()
    assert record["integrity"] == _sri(script)
    assert (docs_ui.VENDORED / "LICENSE").is_file()


async def test_docs_page_serves_the_bundled_script_by_default(courtyard):
    rt = await courtyard(entry_points=False)
    page = await rt.client.get("/api/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'data-url="/api/openapi.json"' in page.text
    assert "cdn" not in page.text.lower()
    record = docs_ui.vendored()
    assert f'integrity="{record["integrity"]}"' in page.text
    src = page.text.split('<script src="', 1)[1].split('"', 1)[0]
    assert src.startswith("/api/docs/scalar.js?v=")
    served = await rt.client.get(src)
    assert served.status_code == 200 and "javascript" in served.headers["content-type"]
    assert _sri(served.content) == record["integrity"]
    assert "immutable" in served.headers["cache-control"]
    assert "max-age=31536000" in served.headers["cache-control"]
    unversioned = await rt.client.get("/api/docs/scalar.js")
    assert "no-cache" in unversioned.headers["cache-control"]
    assert "immutable" not in unversioned.headers["cache-control"]
    etag = served.headers["etag"]
    revalidated = await rt.client.get("/api/docs/scalar.js", headers={"If-None-Match": etag})
    assert revalidated.status_code == 304


async def test_docs_script_can_be_served_from_a_local_file(courtyard, tmp_path):
    script = tmp_path / "scalar.js"
    script.write_text("console.log('offline scalar')")
    rt = await courtyard(entry_points=False, docs_script=str(script))
    page = await rt.client.get("/api/docs")
    assert 'src="/api/docs/scalar.js?v=' in page.text
    assert f'integrity="{_sri(script.read_bytes())}"' in page.text
    served = await rt.client.get("/api/docs/scalar.js")
    assert served.status_code == 200
    assert served.text == "console.log('offline scalar')"


async def test_a_local_file_must_match_an_integrity_given_for_it(courtyard, tmp_path):
    script = tmp_path / "scalar.js"
    script.write_text("console.log('changed')")
    with pytest.raises(Exception, match="does not match docs_script_integrity"):
        await courtyard(
            entry_points=False, docs_script=str(script), docs_script_integrity=_sri(b"other")
        )


async def test_a_docs_script_url_needs_its_integrity(courtyard):
    with pytest.raises(Exception, match="docs_script_integrity"):
        await courtyard(entry_points=False, docs_script="https://example.test/scalar.js")


async def test_a_docs_script_url_is_loaded_with_subresource_integrity(courtyard):
    digest = _sri(b"the cdn copy")
    rt = await courtyard(
        entry_points=False,
        docs_script="https://example.test/scalar.js",
        docs_script_integrity=digest,
    )
    page = (await rt.client.get("/api/docs")).text
    assert (
        f'<script src="https://example.test/scalar.js" integrity="{digest}" '
        'crossorigin="anonymous"></script>'
    ) in page
    assert (await rt.client.get("/api/docs/scalar.js")).status_code == 404
    spec = (await rt.client.get("/api/openapi.json")).json()
    assert "/api/docs/scalar.js" not in spec["paths"]


def test_a_malformed_integrity_is_refused():
    with pytest.raises(docs_ui.DocsScriptError, match="not a subresource-integrity value"):
        docs_ui.resolve("https://example.test/s.js", "md5-abc")


def test_the_page_escapes_what_it_embeds():
    script = docs_ui.DocsScript(src='https://x.test/"><b>', integrity="sha384-AAAA")
    html = docs_ui.page(script)
    assert '"><b>' not in html and "&quot;&gt;&lt;b&gt;" in html
    config = json.loads(
        html.split('data-configuration="', 1)[1].split('"', 1)[0].replace("&quot;", '"')
    )
    assert config == {"url": "/api/openapi.json", "withDefaultFonts": False}
