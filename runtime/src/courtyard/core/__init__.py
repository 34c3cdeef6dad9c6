"""The runtime's own API (Buntime's API): health, plugins, docs, discovery."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import current_app

if TYPE_CHECKING:
    from ..generation import Generation
    from ..host import Host


def current_host() -> Host:
    """The Host serving the current request."""
    return current_app.extensions["courtyard.host"]


def current_generation() -> Generation:
    """The generation the current request runs on."""
    return current_app.extensions["courtyard.generation"]
