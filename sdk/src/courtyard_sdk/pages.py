"""Pages for people that look native in the operator console (docs/console.md).

A plugin renders its page's content, a fragment of HTML, and returns `page(...)`::

    from courtyard_sdk.pages import escape, page, table

    @bp.get("/")
    @require("notes:read")
    async def index() -> Response:
        rows = [[escape(n.title), escape(n.author)] for n in await notes()]
        return page("Notes", table(["Title", "Author"], rows, "No notes yet."))

The console opens a menu entry's page inside its shell: it fetches the page with the
header `HX-Request: true` (htmx) and puts the answer in its content area. `page` then
answers the fragment alone; to any other request (a browser opening the page's address,
a test) it answers a whole document around the same fragment, with the console's style
sheet. Both carry the same security headers.

The fragment contract (what the content may hold):

- HTML the plugin escaped itself (`escape` every value; `table` takes escaped cells);
- no inline `<script>` or `style` attribute, no `<style>`: the console's Content Security
  Policy refuses them. Scripts are files of the plugin's own, named in `scripts` (paths on
  this server); they run each time the page is opened, so wrap them in a function and
  find elements by id;
- the console's classes: `muted`, `error`, `ok`, `warn`, `bad`, `badge` (with `ok`,
  `warn` or `bad`), `card`, `scroll` (around a wide table), `mono`, `log` (on a `<pre>`),
  `n` (a numeric cell); headings from `<h2>` (the page's `<h1>` is its title);
- links relative to the server's root (`/runners/42`), not to the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape as _escape

from quart import Response, has_request_context, request

STYLESHEET = "/console/static/console.css"
CONSOLE = "/console/open"
FRAGMENT_HEADER = "HX-Request"

__all__ = ["escape", "is_fragment_request", "page", "table"]


def escape(value: object) -> str:
    """`value` as text safe inside HTML (None is the empty string)."""
    return "" if value is None else _escape(str(value), quote=True)


def table(headings: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table of already-escaped cells (headings are escaped here), in a `scroll` box,
    or a `muted` line saying `empty` when there is no row."""
    lines = list(rows)
    if not lines:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in lines)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def is_fragment_request() -> bool:
    """Whether the current request is the console fetching a page into its shell."""
    return has_request_context() and request.headers.get(FRAGMENT_HEADER) == "true"


def _headers(scripts: Sequence[str], extra: Mapping[str, str] | None) -> dict[str, str]:
    policy = "default-src 'none'; style-src 'self'; img-src 'self' data:"
    if scripts:
        policy += "; script-src 'self'; connect-src 'self'"
    return {
        "Content-Security-Policy": policy + "; frame-ancestors 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Vary": FRAGMENT_HEADER,
        **(extra or {}),
    }


def page(
    title: str,
    content: str,
    *,
    status: int = 200,
    scripts: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A plugin's page: the fragment for the console, else a whole document.

    :param title: the page's title, shown as its `<h1>` (escaped here).
    :param content: the fragment, already escaped (see the module docstring).
    :param scripts: paths of the plugin's own scripts (`/platform/page.js`).
    :param headers: more response headers (they override the defaults).
    """
    tags = "".join(f'<script src="{escape(src)}" defer></script>' for src in scripts)
    fragment = (
        f'<div class="cy-page" data-title="{escape(title)}">'
        f"<h1>{escape(title)}</h1>{content}{tags}</div>"
    )
    if not is_fragment_request():
        where = request.path if has_request_context() else "/"
        fragment = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="color-scheme" content="light dark">'
            f"<title>{escape(title)} · Courtyard</title>"
            f'<link rel="stylesheet" href="{STYLESHEET}"></head>'
            '<body class="standalone"><header class="standalone-top">'
            f'<a href="{escape(CONSOLE + where)}">Open in the console</a></header>'
            f"<main>{fragment}</main></body></html>\n"
        )
    return Response(
        fragment,
        status=status,
        headers=_headers(scripts, headers),
        content_type="text/html; charset=utf-8",
    )
