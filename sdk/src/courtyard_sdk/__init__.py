"""The Courtyard SDK: everything a plugin author imports.

A plugin is a folder (or an installed distribution) with a `plugin.toml` and a module of
hook implementations::

    from courtyard_sdk import Blueprint, PluginContext, hookimpl

    @hookimpl
    def courtyard_routes(ctx: PluginContext) -> Blueprint:
        bp = Blueprint("hello", __name__)

        @bp.get("/")
        async def index() -> dict:
            return {"hello": ctx.settings["greeting"]}

        return bp
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy
from quart import Blueprint, Request, Response, jsonify, request

from . import hookspecs
from .context import PluginContext, PluginState
from .errors import (
    ApiError,
    CourtyardError,
    ManifestError,
    SettingsError,
    StartupError,
)
from .events import sse_response, stream_to_websocket
from .hook_paths import only_under
from .manifest import Manifest, Menu, SettingSpec, parse_manifest, read_manifest
from .names import is_valid_name
from .origin import allow_without_origin
from .request_ids import current_request_id
from .services import Event
from .status import PluginStatus

try:
    __version__ = version("courtyard-sdk")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)
"""Decorator marking a function as the implementation of a Courtyard hook."""

__all__ = [
    "ApiError",
    "Blueprint",
    "CourtyardError",
    "Event",
    "Manifest",
    "ManifestError",
    "Menu",
    "PluginContext",
    "PluginState",
    "PluginStatus",
    "Request",
    "Response",
    "SettingSpec",
    "SettingsError",
    "StartupError",
    "__version__",
    "allow_without_origin",
    "current_request_id",
    "hookimpl",
    "hookspecs",
    "is_valid_name",
    "jsonify",
    "only_under",
    "parse_manifest",
    "read_manifest",
    "request",
    "sse_response",
    "stream_to_websocket",
]
