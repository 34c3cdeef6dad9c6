"""How a command fails: `error: CODE: message` on stderr and exit status 1.

With `--json` the same error also goes to stdout as `{"error": {"code", "message"}}`, so
that a script reading stdout learns of it too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """A failure a command reports by its `code` (the server's code where there is one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def fail(code: str, message: str, as_json: bool) -> NoReturn:
    """Print the error (also as JSON on stdout with `as_json`) and exit with status 1."""
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}, indent=2))
    click.echo(f"error: {code}: {message}", err=True)
    raise click.exceptions.Exit(1)


def reported(func: F) -> F:
    """Turn a `CommandError` or an `OSError` raised by the command into `fail`, the
    command's own `--json` (its `as_json` parameter) deciding the form."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except CommandError as exc:
            fail(exc.code, exc.message, as_json)
        except OSError as exc:  # a local file unreadable or unwritable: no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            fail("IO_ERROR", f"{where}{exc.strerror or exc}", as_json)

    return cast(F, wrapper)  # functools.wraps: the same signature as `func`
