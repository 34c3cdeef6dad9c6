"""What a plugin may know of the others: the runtime's plugin directory (`ctx.plugins`),
read-only, and the plugin whose route serves the current request.

For plugins that manage plugins for their users (an admin console, an API that lists and
enables plugins per tenant): they read, never change, what the runtime loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from quart import has_request_context
from quart.ctx import RequestContext
from quart.globals import request_ctx

from .manifest import Manifest, Menu
from .status import PluginStatus

OWNERS = "courtyard.owners"
"""The app extension the runtime keeps its route blueprint -> plugin map under."""


@dataclass(frozen=True)
class PluginInfo:
    """One plugin the serving generation found, as the runtime reports it.

    :ivar status: loaded, failed, disabled, ...
    :ivar error: why it failed, when it did.
    :ivar source: "directory" or "entry point".
    :ivar manifest: its parsed `plugin.toml` (None when it could not be read), whose
        `validate_settings` checks settings against its schema.
    """

    name: str
    version: str
    status: PluginStatus
    source: str
    description: str = ""
    base: str | None = None
    error: str | None = None
    menus: tuple[Menu, ...] = ()
    manifest: Manifest | None = None


class PluginDirectory(Protocol):
    """The plugins of the serving generation (`ctx.plugins`), read-only."""

    def list(self) -> list[PluginInfo]:
        """Every plugin found, in load order."""
        ...

    def get(self, name: str) -> PluginInfo | None:
        """The plugin called `name`, if found."""
        ...


def current_plugin() -> str | None:
    """The plugin whose route serves the current request; None for a core route, an
    unknown path, or outside a request."""
    if not has_request_context():
        return None
    # The context itself, not its proxy: one lookup rather than one per access.
    current: RequestContext = request_ctx._get_current_object()  # type: ignore[attr-defined]
    rule = current.request.url_rule
    if rule is None:
        return None
    owners: dict[str, str] = current.app.extensions.get(OWNERS, {})
    return owners.get(rule.endpoint.partition(".")[0])


__all__ = ["OWNERS", "PluginDirectory", "PluginInfo", "current_plugin"]
