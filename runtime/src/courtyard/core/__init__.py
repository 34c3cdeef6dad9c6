"""The runtime's own API (Buntime's API): health, plugins, apps, keys, audit, events, docs.

The core's routes are written against `Runtime`, the narrow view of the dispatcher they
need: its state, its services and apps, and the operations that change the plugin set.
They never see the dispatcher object itself (host.py implements this protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from quart import current_app

if TYPE_CHECKING:
    from ..apps.router import AppRouter
    from ..generation import Generation
    from ..services import Services
    from ..services.replication import Replicator
    from ..services.store import Archive

RUNTIME = "courtyard.runtime"  # app.extensions key of the Runtime serving the app
GENERATION = "courtyard.generation"  # app.extensions key of the app's generation


class Runtime(Protocol):
    """What the core API may ask of the runtime serving it."""

    state: str
    """`starting`, `ready`, `stopping` or `failed`."""
    services: Services
    apps: AppRouter
    replication: Replicator
    """Records changes in the shared store and has the other instances apply them."""

    async def reload(self) -> Generation:
        """Build a generation from the plugin files and serve it.

        :raises BuildError: the old generation serves on.
        """
        ...

    async def install_plugin(
        self, name: str, content: Path, plugin_dir: Path, archive: Archive
    ) -> Generation:
        """Put a plugin's files in place and serve a generation in which it loads, or put
        the previous files back; record `archive` in the shared store.

        :raises BuildError: naming why the plugin did not load.
        """
        ...

    async def remove_plugin(self, root: Path) -> Generation:
        """Delete a directory plugin's folder and serve a generation without it.

        :raises BuildError: the files are gone but the new generation failed to build.
        """
        ...


def current_runtime() -> Runtime:
    """The runtime serving the current request."""
    return cast(Runtime, current_app.extensions[RUNTIME])


def current_generation() -> Generation:
    """The generation the current request runs on."""
    return cast("Generation", current_app.extensions[GENERATION])
