"""`courtyard status`: the instances of a cluster, as the server at --url sees them
(`GET /api/cluster/`, docs/deployment.md)."""

from __future__ import annotations

from typing import Any

import click

from .client import RemoteError, Server
from .errors import reported
from .options import json_option, remote_options
from .output import Column, field, note, print_rows

PATH = "/api/cluster/"


def _number(key: str) -> Column:
    """A column of numbers, where 0 is a value (`field` would show it as missing)."""
    return Column(key.capitalize(), lambda row: str(row.get(key, "-")))


_COLUMNS = (
    Column("Instance", field("id", "-")),
    Column("Host", field("host", "-")),
    _number("pid"),
    Column("State", field("state", "-")),
    _number("generation"),
    _number("revision"),
    _number("lag"),
    Column("Seen", field("seenAt", "-")),
)


@click.command()
@remote_options()
@json_option
@reported
def status(url: str, api_key: str | None, as_json: bool) -> None:
    """Show the instances sharing the server's database: each one's state, serving
    generation, the last change of the shared store it applied (revision) and how many it
    lags behind. Instances not seen for 30 s are gone and not listed.

    Needs the permission cluster:read. With --json: the server's answer as it is.
    """
    body: Any = Server(url, api_key).request("GET", PATH)
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise RemoteError("BAD_RESPONSE", "expected {'instances': [...]}: is --url right?")
    if not as_json:
        note(f"{body.get('instance')} answering; the store is at revision {body.get('revision')}")
    print_rows(instances, _COLUMNS, as_json=as_json, empty="no instances seen", data=body)
    if as_json:
        return
    if differ := _differences(instances):
        note(f"the instances serve different installed plugins: {differ}")
    for instance in instances:
        if failed := instance.get("failed"):
            note(f"{instance.get('id')}: plugin(s) failed: {', '.join(map(str, failed))}")


def _differences(instances: list[dict[str, Any]]) -> str:
    """The installed (entry-point) plugins that not every instance serves alike, as
    `name (id: version, ...)`, or '' when they all agree."""
    served = [(i.get("id"), i.get("entryPoints") or {}) for i in instances]
    names = sorted({name for _, plugins in served for name in plugins})
    differing = []
    for name in names:
        if len({plugins.get(name) for _, plugins in served}) > 1:
            versions = ", ".join(f"{who}: {plugins.get(name, 'none')}" for who, plugins in served)
            differing.append(f"{name} ({versions})")
    return "; ".join(differing)
