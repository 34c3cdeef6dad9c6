"""List parameters: `page` (1-based), `pageSize` (at most 100), `sort` (a documented field,
`-` for descending) and `filter` (a JSON expression on documented fields), turned into
SQLAlchemy expressions; anything else is a 400 that names the parameter or field.

A filter is a JSON object. Each key is a documented field or `and` / `or`:

- `{"status": "draft"}`: equality; several keys must all hold;
- `{"status": {"in": ["draft", "finalized"]}}`, `{"createdAt": {"gte": "2026-01-01T00:00:00Z"}}`:
  operators `eq`, `ne`, `in`, `gt`, `gte`, `lt`, `lte`;
- `{"or": [{...}, {...}]}`, `{"and": [{...}, {...}]}`.

Values are bound parameters, never text spliced into SQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.sql import Select

from .envelope import invalid

Kind = Literal["string", "integer", "boolean", "datetime"]
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 6
MAX_TERMS = 64
MAX_IN = 100
OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class Field:
    """A documented field of a list: its API name, its column and its type."""

    name: str
    column: Any
    kind: Kind = "string"


@dataclass(frozen=True)
class ListQuery:
    """The parsed list parameters."""

    page: int
    page_size: int
    order: list[Any]
    where: ColumnElement[bool]


def _integer(args: Mapping[str, str], name: str, default: int, high: int | None) -> int:
    text = args.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 9:
        raise invalid(name, "must be a positive integer", "INVALID_INTEGER")
    value = int(text)
    if value < 1 or (high is not None and value > high):
        bound = f"between 1 and {high}" if high is not None else "at least 1"
        raise invalid(name, f"must be {bound}", "OUT_OF_RANGE")
    return value


def parse(args: Mapping[str, str], fields: Sequence[Field], default_sort: str) -> ListQuery:
    """Read `page`, `pageSize`, `sort` and `filter` from a query string."""
    by_name = {f.name: f for f in fields}
    page = _integer(args, "page", 1, None)
    page_size = _integer(args, "pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    order = _sort(args.get("sort") or default_sort, by_name)
    where = _filter(args.get("filter"), by_name)
    return ListQuery(page, page_size, order, where)


def _sort(text: str, fields: Mapping[str, Field]) -> list[Any]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 3 or any(not p for p in parts):
        raise invalid("sort", "one to three fields, separated by commas", "INVALID_SORT")
    order = []
    for part in parts:
        name = part[1:] if part.startswith("-") else part
        field = fields.get(name)
        if field is None:
            raise invalid("sort", f"cannot sort on {name[:64]!r}", "UNKNOWN_FIELD")
        order.append(field.column.desc() if part.startswith("-") else field.column.asc())
    return order


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _filter(text: str | None, fields: Mapping[str, Field]) -> ColumnElement[bool]:
    if text is None or text.strip() == "":
        return true()
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid("filter", f"at most {MAX_FILTER_LENGTH} characters", "FILTER_TOO_LONG")
    try:
        expression = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise invalid("filter", "is not a JSON expression", "INVALID_JSON") from None
    return _Translator(fields).node(expression, "filter", 0)


class _Translator:
    """Turns a parsed filter into a SQL expression, checking every field and value."""

    def __init__(self, fields: Mapping[str, Field]) -> None:
        self.fields = fields
        self.terms = 0

    def node(self, value: Any, path: str, depth: int) -> ColumnElement[bool]:
        if depth > MAX_DEPTH:
            raise invalid(path, f"nested more than {MAX_DEPTH} levels", "FILTER_TOO_DEEP")
        if not isinstance(value, dict) or not value:
            raise invalid(path, "must be a non-empty JSON object", "INVALID_FILTER")
        clauses = []
        for key, item in value.items():
            if key in ("and", "or"):
                clauses.append(self.logical(key, item, f"{path}.{key}", depth))
            else:
                clauses.append(self.condition(key, item, path))
        return and_(*clauses)

    def logical(self, key: str, items: Any, path: str, depth: int) -> ColumnElement[bool]:
        if not isinstance(items, list) or not items:
            raise invalid(path, "must be a non-empty list of expressions", "INVALID_FILTER")
        parts = [self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        return and_(*parts) if key == "and" else or_(*parts)

    def condition(self, name: str, spec: Any, path: str) -> ColumnElement[bool]:
        field = self.fields.get(name)
        shown = f"{path}.{name[:64]}"
        if field is None:
            raise invalid(shown, "is not a field that can be filtered on", "UNKNOWN_FIELD")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise invalid("filter", f"at most {MAX_TERMS} conditions", "FILTER_TOO_LARGE")
        if not isinstance(spec, dict):
            return field.column == _value(field, spec, shown)
        if not spec:
            raise invalid(shown, "needs an operator", "INVALID_FILTER")
        clauses = []
        for op, operand in spec.items():
            where = f"{shown}.{str(op)[:16]}"
            if op not in OPERATORS:
                raise invalid(where, f"unknown operator; use {', '.join(OPERATORS)}", "BAD_OP")
            clauses.append(_compare(field, op, operand, where))
        return and_(*clauses)


def _compare(field: Field, op: str, operand: Any, where: str) -> ColumnElement[bool]:
    column = field.column
    if op == "in":
        if not isinstance(operand, list) or len(operand) > MAX_IN:
            raise invalid(where, f"must be a list of at most {MAX_IN} values", "INVALID_LIST")
        values = [_value(field, v, where) for v in operand]
        return column.in_(values) if values else false()
    value = _value(field, operand, where)
    if op in ("gt", "gte", "lt", "lte") and field.kind == "boolean":
        raise invalid(where, "ranges do not apply to a boolean", "INVALID_OPERATOR")
    return {
        "eq": lambda: column == value,
        "ne": lambda: column != value,
        "gt": lambda: column > value,
        "gte": lambda: column >= value,
        "lt": lambda: column < value,
        "lte": lambda: column <= value,
    }[op]()


def _value(field: Field, value: Any, where: str) -> Any:
    """`value` checked against the field's type (datetimes normalised as stored)."""
    if field.kind == "boolean":
        if not isinstance(value, bool):
            raise invalid(where, "must be true or false", "INVALID_TYPE")
        return value
    if field.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**62:
            raise invalid(where, "must be an integer", "INVALID_TYPE")
        return value
    if not isinstance(value, str) or len(value) > 512:
        raise invalid(where, "must be a string of at most 512 characters", "INVALID_TYPE")
    if field.kind == "datetime":
        return timestamp(value, where)
    return value


def timestamp(value: str, where: str) -> str:
    """An ISO 8601 time as stored (UTC, microseconds, `Z`); naive times are UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(where, "must be an ISO 8601 date-time", "INVALID_DATETIME") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def page(session: Any, statement: Select[Any], query: ListQuery, tiebreak: Any) -> Any:
    """One page of `statement` and its pagination meta: `(rows, pagination)`."""
    filtered = statement.where(query.where)
    total = int(await session.scalar(select(func.count()).select_from(filtered.subquery())) or 0)
    rows = (
        await session.exec(
            filtered.order_by(*query.order, tiebreak)
            .offset((query.page - 1) * query.page_size)
            .limit(query.page_size)
        )
    ).all()
    pages = math.ceil(total / query.page_size) if total else 0
    return rows, {
        "page": query.page,
        "pageSize": query.page_size,
        "totalItems": total,
        "totalPages": pages,
        "hasNext": query.page < pages,
        "hasPrevious": query.page > 1 and total > 0,
    }


def paged(
    items: Sequence[Any], page_number: int, page_size: int
) -> tuple[list[Any], dict[str, Any]]:
    """One page of a list held in memory, and its pagination meta (as `page` answers)."""
    start = (page_number - 1) * page_size
    pages = math.ceil(len(items) / page_size) if items else 0
    return list(items[start : start + page_size]), {
        "page": page_number,
        "pageSize": page_size,
        "totalItems": len(items),
        "totalPages": pages,
        "hasNext": page_number < pages,
        "hasPrevious": page_number > 1 and bool(items),
    }


def window(args: Mapping[str, str]) -> tuple[int, int]:
    """`page` and `pageSize` of a list that is not a table's (no `sort`, no `filter`).

    :raises ReleasesError: 400 for a bad value, or for `sort` or `filter` given.
    """
    for name in ("sort", "filter"):
        if args.get(name):
            raise invalid(name, "this list is not sorted or filtered", "UNSUPPORTED")
    return _integer(args, "page", 1, None), _integer(
        args, "pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
    )
