"""`/.well-known/courtyard`, and the names `create_app` takes from the API's description:
the OpenAPI provider (core/openapi.py) and the docs page (core/docs_ui.py)."""

from __future__ import annotations

from courtyard_sdk.openapi import responds
from quart import Blueprint

from .. import __version__
from .docs_ui import DocsScriptError, configure_docs_script
from .openapi import CORE_TAGS, DESCRIPTION, SECURITY_SCHEMES, CourtyardOpenAPIProvider

__all__ = [
    "CORE_TAGS",
    "DESCRIPTION",
    "SECURITY_SCHEMES",
    "CourtyardOpenAPIProvider",
    "DocsScriptError",
    "blueprint",
    "configure_docs_script",
]

blueprint = Blueprint("meta", __name__)


@blueprint.get("/.well-known/courtyard")
@responds(
    200,
    "Where the API lives, and the server's version",
    schema={
        "type": "object",
        "required": ["api", "version"],
        "properties": {"api": {"type": "string"}, "version": {"type": "string"}},
    },
)
async def well_known() -> dict[str, str]:
    """Where this server's API lives, and its version."""
    return {"api": "/api", "version": __version__}
