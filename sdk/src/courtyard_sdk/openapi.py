"""Saying what a route answers, for the runtime's OpenAPI document (`/api/openapi.json`).

quart-schema's decorators (`validate_request`, `document_request`, `document_response`,
`document_querystring`, ...) describe bodies, queries and JSON answers with models. The
runtime adds, for every operation, what it knows by itself: the operationId (qualified by
the plugin's name), the plugin's tag, the credentials and permissions of a route guarded
with `require`, and the error answers any route of its kind can give (400 for a route
with a body or a query, 404 for a path with parameters, 401, 403, 413, 429, and a
default). Two decorators say the rest:

```python
from courtyard_sdk.openapi import errors, responds

@bp.get("/")
@responds(200, "The page", media_type="text/html")
async def index(): ...

@bp.delete("/notes/<note_id>")
@errors((404, "NOTE_NOT_FOUND"), (409, "NOTE_LOCKED"))
async def delete_note(note_id: str): ...
```

Error answers carry the runtime's envelope, `ErrorBody`: `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, Field

F = TypeVar("F", bound=Callable[..., Any])

ERRORS_ATTRIBUTE = "__courtyard_errors__"
RESPONSES_ATTRIBUTE = "__courtyard_responses__"
ERRORS_ONLY_ATTRIBUTE = "__courtyard_errors_only__"


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="A stable code in capitals, such as `VAULT_NOT_FOUND`.")
    message: str = Field(description="What went wrong, for people.")


class ErrorBody(BaseModel):
    """The envelope of every error answer."""

    error: ErrorDetail


def errors(*answers: int | tuple[int, str], only: bool = False) -> Callable[[F], F]:
    """Declare error answers of a route beyond those the runtime adds by itself.

    Each answer is a status, or a status and the `code` the body carries with it;
    `@errors(400, (404, "VAULT_NOT_FOUND"), (409, "VAULT_EXISTS"))`. Repeating a status
    with other codes lists them all. Decorators stack, in any order around `require`.

    :param only: the route never succeeds (it explains a malformed request): the
        document lists no success answer for it.

    :raises ValueError: for a status outside 400-599.
    """
    found: dict[int, list[str]] = {}
    for answer in answers:
        status, code = answer if isinstance(answer, tuple) else (answer, None)
        if not 400 <= status <= 599:
            raise ValueError(f"errors(): {status} is not an error status (400-599)")
        codes = found.setdefault(status, [])
        if code is not None and code not in codes:
            codes.append(code)

    def decorate(view: F) -> F:
        # A fresh dict: `functools.wraps` may have shared the inner function's one.
        merged = {s: list(c) for s, c in getattr(view, ERRORS_ATTRIBUTE, {}).items()}
        for status, codes in found.items():
            known = merged.setdefault(status, [])
            known.extend(c for c in codes if c not in known)
        setattr(view, ERRORS_ATTRIBUTE, merged)
        if only:
            setattr(view, ERRORS_ONLY_ATTRIBUTE, True)
        return view

    return decorate


def responds(
    status: int,
    description: str,
    *,
    media_type: str | None = "application/json",
    schema: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Declare an answer that `document_response` cannot describe: one without a model
    (201 with any JSON, 204 without a body, a 302 redirect) or of another media type (an
    HTML page, a script, an event stream).

    :param media_type: the body's type; None for an answer without a body.
    :param schema: the body's JSON Schema (any value of the media type when not given).
    :param headers: response headers it carries, name -> description.
    """
    answer: dict[str, Any] = {"description": description}
    if media_type is not None:
        answer["content"] = {media_type: {"schema": dict(schema or {})}}
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }

    def decorate(view: F) -> F:
        declared = dict(getattr(view, RESPONSES_ATTRIBUTE, {}))
        declared[str(status)] = answer
        setattr(view, RESPONSES_ATTRIBUTE, declared)
        return view

    return decorate
