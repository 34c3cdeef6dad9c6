"""A queue's `input` fields, checked at enqueue as runqy checks them.

runqy's schemas are not JSON Schema: each field names the JSON types it accepts
(`string`, `int`, `float`, `bool`, `array`, `object`), whether it is required (yes unless
`required: false`) and an optional default. Fields the schema does not name pass through
unchanged; an optional field that is missing gets its default; an `int` field given a
whole float (`3.0`) is stored as an integer. The `output` fields describe results and
are not enforced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import FieldSchema


class PayloadError(ValueError):
    """The payload does not match the queue's input fields."""


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _allowed(value: Any, types: Sequence[str]) -> bool:
    kind = _type_of(value)
    if kind == "int":
        return "int" in types or "float" in types
    if kind == "float":
        return "float" in types or ("int" in types and float(value).is_integer())
    return kind in types


def apply_input(payload: Any, fields: Sequence[FieldSchema]) -> Any:
    """`payload` checked against `fields`, with defaults filled in.

    :raises PayloadError: naming the first field that is missing or of the wrong type.
    """
    if not fields:
        return payload
    if not isinstance(payload, dict):
        raise PayloadError(f"data must be a JSON object, not {_type_of(payload)}")
    checked = dict(payload)
    for spec in fields:
        if spec.name not in checked:
            if spec.required:
                raise PayloadError(f"{spec.name} is required")
            if spec.default is not None:
                checked[spec.name] = spec.default
            continue
        value = checked[spec.name]
        if not _allowed(value, spec.type):
            raise PayloadError(
                f"field '{spec.name}' has type {_type_of(value)}, expected one of: "
                + ", ".join(spec.type)
            )
        if "int" in spec.type and isinstance(value, float) and value.is_integer():
            checked[spec.name] = int(value)
    return checked
