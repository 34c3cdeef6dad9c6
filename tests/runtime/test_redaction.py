"""Secrets stay secret: redaction (redaction.py) of what the runtime echoes, the audit log
kept from `*:read`, and plugin secrets long enough to resist guessing (credentials.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from courtyard import redaction
from courtyard.redaction import RedactingFilter, redact
from courtyard.services.credentials import check_secrets, collect
from courtyard.services.roles import Roles
from courtyard.settings import Settings
from courtyard.testing import write_plugin
from courtyard_sdk import Manifest, SettingsError
from courtyard_sdk.identity import grants

KEY = "cyk_0123456789abcdef_Wq3xY-secret_part_of_the_key_0123456789abcdefg"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
SECRET_PART = "Wq3xY-secret_part"

ECHO = """
from courtyard_sdk import ApiError, Blueprint, hookimpl
from quart import request


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("echo", __name__)

    @bp.route("/<path:rest>", methods=["GET", "POST"])
    async def echo(rest):
        raise ApiError(404, "NOTHING_HERE", f"nothing at {request.path}")

    return bp
"""

CREDENTIAL = '[[credentials]]\nname = "runqy"\nenv = "RUNQY_API_KEY"\nroles = ["viewer"]\n'


@pytest.fixture(autouse=True)
def forget_secrets() -> Iterator[None]:
    yield
    redaction.forget_all()


# -- the function --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/api/keys/{KEY}", "/api/keys/cyk_0123456789abcdef_[redacted]"),
        (f"DELETE /x/{KEY}?a=1", "DELETE /x/cyk_0123456789abcdef_[redacted]?a=1"),
        ("/x/cyk_half-a-key", "/x/cyk_[redacted]"),
        (f"/token/{JWT}/next", "/token/[redacted]/next"),
        ("a " + "A" * 20 + "." + "b" * 20 + "." + "c" * 20, "a [redacted]"),
    ],
)
def test_secrets_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/static/app.min.js",
        "/lib/jquery-3.6.0.min.js",
        "www.example.com",
        "/api/plugins/@acme/queues",
        "API key 0123456789abcdef not found",
        "mycyk_thing",
        "version 1.2.3",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_remembered_secrets_are_redacted() -> None:
    redaction.remember(["runqy-secret-0123456789", "short"])
    assert redact("/q/runqy-secret-0123456789/x") == "/q/[redacted]/x"
    assert redact("a short word") == "a short word"  # too short to remember


# -- where it is applied ---------------------------------------------------------------------


async def test_error_messages_never_echo_a_secret(courtyard, plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "echo", code=ECHO)
    rt = await courtyard(entry_points=False)
    for path in (f"/echo/{KEY}", f"/echo/{JWT}"):
        answer = await rt.client.get(path)
        assert answer.status_code == 404
        assert answer.json()["error"]["message"].startswith("nothing at /echo/")
        assert SECRET_PART not in answer.text and JWT not in answer.text
    answer = await rt.client.delete(f"/api/keys/{KEY}")
    assert answer.json()["error"]["code"] == "KEY_NOT_FOUND"
    assert SECRET_PART not in answer.text
    assert "cyk_0123456789abcdef_[redacted]" in answer.text


async def test_plugin_credential_values_are_redacted(
    courtyard, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "runqy-secret-from-the-environment"
    monkeypatch.setenv("RUNQY_API_KEY", secret)
    write_plugin(plugin_dir, "echo", CREDENTIAL, code=ECHO)
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get(f"/echo/{secret}", headers={"X-API-Key": secret})
    assert answer.json()["error"]["message"] == "nothing at /echo/[redacted]"


async def test_the_audit_log_records_paths_redacted(courtyard, plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "echo", code=ECHO)
    rt = await courtyard(entry_points=False)
    await rt.client.post(f"/echo/{KEY}")
    await rt.client.delete(f"/api/keys/{KEY}")
    await rt.dispatcher.services.audit.flush()
    entries = (await rt.client.get("/api/audit/", params={"kind": "request"})).json()["entries"]
    paths = sorted(e["path"] for e in entries)
    assert paths == [
        "/api/keys/cyk_0123456789abcdef_[redacted]",
        "/echo/cyk_0123456789abcdef_[redacted]",
    ]


async def test_answers_below_quart_are_redacted(courtyard, tmp_path: Path) -> None:
    """A static app's 404 quotes the path (asgi.send_error)."""
    site = tmp_path / "apps" / "site" / "1.0.0"
    site.mkdir(parents=True)
    (site / "package.json").write_text('{"name": "site", "version": "1.0.0"}')
    (site / "index.html").write_text("<h1>site</h1>")
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get(f"/site/{KEY}")
    assert answer.status_code == 404
    assert SECRET_PART not in answer.text
    assert "cyk_0123456789abcdef_[redacted]" in answer.json()["error"]["message"]


def test_log_lines_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("courtyard.test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s answered %d", f"/x/{KEY}", 404)
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            logger.exception("failed")
        logger.warning("nothing secret in %s", "/static/app.min.js")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET_PART not in text and JWT not in text
    assert "GET /x/cyk_0123456789abcdef_[redacted] answered 404" in text
    assert "ValueError: bad token [redacted]" in text
    assert "nothing secret in /static/app.min.js" in text


def test_the_server_installs_the_log_filter() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        redaction.install_log_redaction()
        redaction.install_log_redaction()  # once is enough
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


# -- audit:read is no `*:read` ---------------------------------------------------------------


def test_wildcard_reads_do_not_grant_the_audit_log() -> None:
    assert not grants({"*:read"}, "audit:read")
    assert grants({"*:read"}, "plugins:read")
    assert grants({"*"}, "audit:read")
    assert grants({"audit:*"}, "audit:read")
    assert grants({"audit:read"}, "audit:read")
    roles = Roles({})
    assert not grants(roles.expand(["viewer"]), "audit:read")
    assert not grants(roles.expand(["editor"]), "audit:read")
    assert grants(roles.expand(["admin"]), "audit:read")


async def test_viewers_and_editors_cannot_read_the_audit_log(courtyard) -> None:
    rt = await courtyard(entry_points=False)
    for roles, permissions, status in [
        (["viewer"], [], 403),
        (["editor"], [], 403),
        ([], ["*:read"], 403),
        (["viewer"], ["audit:read"], 200),
        (["admin"], [], 200),
    ]:
        client = await rt.client_as(roles=roles, permissions=permissions)
        answer = await client.get("/api/audit/")
        assert answer.status_code == status, (roles, permissions, answer.text)
        assert (await client.get("/api/plugins/")).status_code == 200


# -- plugin secrets long enough ------------------------------------------------------------------


def manifest() -> Manifest:
    credential = {"name": "runqy", "env": "RUNQY_API_KEY", "setting": "api_key"}
    return Manifest.model_validate(
        {
            "name": "queues",
            "config": {"api_key": {"type": "string", "default": ""}},
            "credentials": [{**credential, "roles": ["viewer"]}],
        }
    )


@pytest.mark.parametrize(
    ("environ", "operator", "source"),
    [
        ({"RUNQY_API_KEY": "short-key"}, {}, "environment variable RUNQY_API_KEY"),
        ({}, {"api_key": "short-key"}, "setting api_key"),
    ],
)
def test_a_short_plugin_secret_is_refused_unless_insecure(
    environ: dict, operator: dict, source: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        collect("queues", manifest(), operator, Roles({}), environ)
    assert str(refused.value) == (
        f"credential runqy: the secret in {source} is 9 characters long; "
        "use at least 16 (or run with insecure)"
    )
    found = collect("queues", manifest(), operator, Roles({}), environ, insecure=True)
    assert [c.name for c in found] == ["runqy"]
    long = {"RUNQY_API_KEY": "sixteen-chars-ok"}
    assert len(collect("queues", manifest(), {}, Roles({}), long)) == 1


def test_check_secrets_names_the_variable(tmp_path: Path, plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "queues", CREDENTIAL)
    settings = Settings.model_validate(
        {"plugin_dirs": [plugin_dir], "data_dir": tmp_path / "data", "entry_points": False}
    )
    with pytest.raises(SettingsError, match="plugin queues: credential runqy: the secret in "):
        check_secrets(settings, {"RUNQY_API_KEY": "abc"})
    check_secrets(settings, {"RUNQY_API_KEY": "a-long-enough-secret"})
    check_secrets(settings, {})  # unset: the credential is off
    check_secrets(settings.model_copy(update={"insecure": True}), {"RUNQY_API_KEY": "abc"})
    disabled = settings.model_copy(update={"plugins": {"queues": {"enabled": False}}})
    check_secrets(disabled, {"RUNQY_API_KEY": "abc"})


def test_the_server_refuses_to_start_with_a_short_secret(
    courtyard_server, plugin_dir: Path
) -> None:
    write_plugin(plugin_dir, "queues", CREDENTIAL)
    with pytest.raises(RuntimeError) as failed:
        courtyard_server(entry_points=False, env={"RUNQY_API_KEY": "tooshort"})
    assert (
        "plugin queues: credential runqy: the secret in environment variable RUNQY_API_KEY "
        "is 8 characters long" in str(failed.value)
    )


async def test_a_reload_excludes_a_plugin_with_a_short_secret(
    courtyard, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNQY_API_KEY", "tooshort")
    write_plugin(plugin_dir, "queues", CREDENTIAL)
    rt = await courtyard(entry_points=False)
    listed = (await rt.client.get("/api/plugins/")).json()
    assert [(p["name"], p["status"]) for p in listed] == [("queues", "failed")]
    assert "RUNQY_API_KEY is 8 characters long" in listed[0]["error"]
    assert json.dumps(listed).count("tooshort") == 0
