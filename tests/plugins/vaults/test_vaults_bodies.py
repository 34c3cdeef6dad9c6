"""How the vault routes read a body: any bytes give a JSON object or a 400, never a 5xx;
and no vault route lets a request without `Origin` through."""

from __future__ import annotations

import pytest
from courtyard_sdk.origin import allows_without_origin
from courtyard_vaults.errors import InvalidRequest
from courtyard_vaults.validation import parse_body


@pytest.mark.parametrize(
    ("raw", "mimetype"),
    [
        (b"\xff\xfe", ""),
        (b'{"name": "\xff"}', "application/json"),
        (b"\x00", ""),
        (b"[" * 100_000, ""),
        (b'{"name": "v", "x": ' + b"[" * 40 + b"]" * 40 + b"}", ""),
        (b'{"name": "v", "x": NaN}', ""),
        (b'{"name": "v", "x": -Infinity}', ""),
        (b'{"name": "v", "x": 1e309}', ""),
        (b'{"name": "v", "x": ' + b"9" * 5000 + b"}", ""),
        (b"[]", ""),
        (b"null", ""),
        (b'"v"', ""),
        (b"", ""),
        (b"  ", ""),
        (b'{"name": "v"', ""),
        (b'{"name": "v"}', "text/plain"),
    ],
)
def test_unusable_bodies_are_400(raw, mimetype):
    with pytest.raises(InvalidRequest) as raised:
        parse_body(raw, mimetype)
    assert raised.value.status == 400


def test_a_body_is_read_whatever_its_type_but_text_plain():
    for mimetype in ("", "application/json", "application/x-www-form-urlencoded"):
        assert parse_body(b'{"name": "v", "n": 1.5}', mimetype) == {"name": "v", "n": 1.5}


async def test_description_and_names_refuse_nul(start, master_key):
    rt = await start()
    for body in (
        {"name": "v", "description": "a\x00b"},
        {"name": "v\x00"},
        {"name": "v", "description": 12},
    ):
        answer = await rt.client.post("/api/vaults", json=body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    assert (await rt.client.get("/api/vaults")).json()["count"] == 0


async def test_no_vault_route_accepts_a_request_without_origin(start, master_key):
    rt = await start()
    app = rt.dispatcher.current.app
    routes = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api/vaults", "/vaults"))
        and rule.methods & {"POST", "PUT", "PATCH", "DELETE"}
    ]
    assert len(routes) == 4  # create, delete, set and delete an entry
    for rule in routes:
        assert not allows_without_origin(app.view_functions[rule.endpoint]), rule.rule
