"""The status of a plugin, as `GET /api/plugins/` and the runtime report it.

It lives in the SDK, the bottom layer, so that the runtime and plugin tests share one
spelling. A `StrEnum`: each member is the string it stands for, so it compares equal to the
`status` of a JSON answer (`PluginStatus.LOADED == "loaded"`) and is encoded as that string.
"""

from __future__ import annotations

from enum import StrEnum


class PluginStatus(StrEnum):
    """What became of one plugin in the serving generation."""

    LOADED = "loaded"
    """The serving generation runs it."""

    FAILED = "failed"
    """Excluded (its `error` says why), or its manifest is invalid."""

    DISABLED = "disabled"
    """`enabled = false`, left out by `only_plugins`, or shadowed by an earlier plugin of the
    same name; not a failure, so strict mode allows it."""

    UNLOADED = "unloaded"
    """Found on disk since the serving generation was built: a reload will load it."""


__all__ = ["PluginStatus"]
