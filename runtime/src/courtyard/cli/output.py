"""What commands print: JSON for scripts, rows as tables for people, notes on stderr.

Every list a command prints goes through `print_rows`: the rows as JSON with `--json`, a
message when there are none, else a rich table. A table is headed and ruled (what the
commands that talk to a server print), or plain: no header, no rule, columns two spaces
apart, and optionally lines of detail under a row (what `plugins list` and `db status`
print). rich is imported only when a table is printed, so that `courtyard --help` stays
fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# Lines never folded: a table piped to a file or a program, and a plain table anywhere.
WIDE = 4096


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that does not fold lines when piped."""
    from rich.console import Console

    found = Console(stderr=stderr, highlight=False)
    if not found.is_terminal:
        found.width = WIDE  # piped: never fold a path or a name onto two lines
    return found


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2))


def note(message: str) -> None:
    """A line for people on stderr (stdout stays for results)."""
    click.echo(message, err=True)


@dataclass(frozen=True)
class Column:
    """A table column: its title and how a row's cell is written."""

    title: str
    cell: Callable[[Any], str]
    min_width: int | None = None


def field(key: str, missing: str = "") -> Callable[[Any], str]:
    """A cell showing `row[key]`, or `missing` when it is absent, None or empty."""
    return lambda row: str(row.get(key) or missing)


def print_rows(
    rows: Sequence[Any],
    columns: Sequence[Column],
    *,
    as_json: bool,
    empty: str | None,
    data: Any = None,
    plain: bool = False,
    details: Callable[[Any], list[str]] | None = None,
) -> None:
    """Print `rows`: as JSON, as `empty`, or as a table of `columns`.

    :param as_json: print `data` (by default the rows themselves) as JSON instead.
    :param empty: the line printed when there are no rows (None: nothing).
    :param plain: a table without header or rules, never folded.
    :param details: for a plain table, lines printed under a row, lined up with its
        second column.
    """
    if as_json:
        print_json(rows if data is None else data)
    elif not rows:
        if empty is not None:
            click.echo(empty)
    elif plain:
        _print_plain(rows, columns, details)
    else:
        console().print(_table(rows, columns, plain=False))


def _table(
    rows: Sequence[Any],
    columns: Sequence[Column],
    plain: bool,
    widths: Sequence[int] | None = None,
) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if plain:
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for number, column in enumerate(columns):
        table.add_column(
            column.title,
            width=widths[number] if widths else None,
            min_width=column.min_width,
            no_wrap=plain,
            overflow="ignore" if plain else "fold",
        )
    for row in rows:
        table.add_row(*(Text(column.cell(row)) for column in columns))  # Text: no markup
    return table


def _print_plain(
    rows: Sequence[Any],
    columns: Sequence[Column],
    details: Callable[[Any], list[str]] | None,
) -> None:
    from rich.cells import cell_len
    from rich.console import Console

    # Each row is a table of its own (so that its detail lines can follow it, whatever
    # its height), all with the widths the whole table would have.
    widths = [
        max(
            [
                column.min_width or 0,
                *(cell_len(line) for row in rows for line in column.cell(row).splitlines()),
            ]
        )
        for column in columns
    ]
    wide = Console(width=WIDE, highlight=False, color_system=None)
    for row in rows:
        table = _table([row], columns, plain=True, widths=widths)
        for line in wide.render_lines(table, wide.options, pad=False):
            click.echo("".join(segment.text for segment in line).rstrip())
        for detail in details(row) if details else []:
            click.echo(" " * (widths[0] + 2) + detail)
