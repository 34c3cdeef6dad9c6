"""courtyard.json_provider: answers encoded with orjson read as the `json` module's did."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from courtyard.json_provider import JSONProvider
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from quart import Quart
from quart.json.provider import DefaultJSONProvider
from quart_schema import QuartSchema


class Model(BaseModel):
    name: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.fixture
def app() -> Quart:
    app = Quart("json")
    QuartSchema(app)  # its provider's `default` encodes models
    app.json = JSONProvider(app, default=app.json.default)  # as the runtime wires it
    return app


VALUES: list[Any] = [
    {"ok": True, "n": None, "list": [1, 2.5, "x"]},
    {"b": 1, "a": 2},  # order kept: the API documents' order
    {"when": datetime(2026, 12, 5, 7, 0, tzinfo=UTC)},  # an HTTP date, as Quart's
    {"id": uuid.UUID(int=5), "amount": Decimal("1.10")},
    {"point": Point(1, 2)},
    {1: "int key", 2.5: "float key", None: "none key"},
    {True: "bool key"},
    {"big": 2**70},  # past orjson's 64 bits: the json module encodes it
    {"text": "café ☕"},
]


@pytest.mark.parametrize("value", VALUES)
async def test_encoded_values_read_back_as_the_json_module_encoded_them(
    app: Quart, value: Any
) -> None:
    quart_provider = DefaultJSONProvider(app)
    quart_provider.default = app.json.default  # type: ignore[attr-defined]
    quart_provider.sort_keys = False
    ours = app.json.dumps(value)
    assert json.loads(ours) == json.loads(quart_provider.dumps(value))
    assert list(json.loads(ours)) == list(json.loads(quart_provider.dumps(value)))


async def test_models_are_encoded_through_the_default(app: Quart) -> None:
    assert json.loads(app.json.dumps({"m": Model(name="n")})) == {"m": {"name": "n"}}


async def test_an_answer_is_compact_utf8_with_a_newline(app: Quart) -> None:
    async with app.app_context():
        response = app.json.response({"text": "café", "n": [1, 2]})
        assert response.mimetype == "application/json"
        assert await response.get_data() == '{"text":"café","n":[1,2]}\n'.encode()


async def test_what_orjson_refuses_goes_through_the_json_module(app: Quart) -> None:
    async with app.app_context():
        lone_surrogate = app.json.response({"s": "\ud800"})
        assert await lone_surrogate.get_data() == b'{"s":"\\ud800"}\n'
    with pytest.raises(PydanticSerializationError, match="Unable to serialize unknown type"):
        app.json.dumps({"o": object()})  # as quart-schema's provider refuses it


async def test_options_go_through_the_json_module(app: Quart) -> None:
    assert app.json.dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'
    app.debug = True  # debug answers are indented, as Quart's
    async with app.app_context():
        response = app.json.response({"a": 1})
        assert await response.get_data() == b'{\n  "a": 1\n}\n'
