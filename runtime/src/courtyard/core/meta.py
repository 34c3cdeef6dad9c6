"""`/.well-known/courtyard`, the docs page's script, and per-plugin OpenAPI tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from courtyard_sdk.identity import PERMISSIONS_ATTRIBUTE
from quart import Blueprint, Quart, current_app, send_file
from quart_schema import OpenAPIProvider, hide
from quart_schema.openapi import APIKeySecurityScheme, HttpSecurityScheme
from werkzeug.routing import Rule

from .. import __version__

# Pinned so the docs page does not change under a user; override with `docs_script`.
SCALAR_JS_URL = "https://cdn.jsdelivr.net/npm/@scalar/api-reference@1.72.1"
LOCAL_SCRIPT_PATH = "/api/docs/scalar.js"
# The two ways to present a credential (docs/security.md).
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": HttpSecurityScheme(scheme="bearer", bearer_format="API key or JWT"),
    "apiKey": APIKeySecurityScheme(name="X-API-Key", in_="header"),
}
_GUARDED_RESPONSES = {
    "401": {"description": "No credential, or a bad one (`AUTHENTICATION_REQUIRED`, ...)"},
    "403": {"description": "The credential lacks a permission (`AUTHORIZATION_FAILED`)"},
}

blueprint = Blueprint("meta", __name__)


@blueprint.get("/.well-known/courtyard")
async def well_known() -> dict[str, str]:
    """Where this server's API lives, and its version."""
    return {"api": "/api", "version": __version__}


@hide
async def local_docs_script() -> Any:
    """Serve the docs page's script from a local file, for offline installs."""
    path = current_app.config["COURTYARD_DOCS_SCRIPT_FILE"]
    return await send_file(path, mimetype="text/javascript")


def configure_docs_script(app: Quart, docs_script: str | None) -> None:
    """Point the Scalar page at `docs_script`: an http(s) URL, or a local file we serve."""
    url = docs_script or SCALAR_JS_URL
    if not url.startswith(("http://", "https://")):
        path = Path(url).absolute()
        if not path.is_file():
            raise FileNotFoundError(f"docs_script {path} does not exist")
        app.config["COURTYARD_DOCS_SCRIPT_FILE"] = path
        app.add_url_rule(LOCAL_SCRIPT_PATH, "docs_script", local_docs_script)
        url = LOCAL_SCRIPT_PATH
    app.config["QUART_SCHEMA_SCALAR_JS_URL"] = url


class CourtyardOpenAPIProvider(OpenAPIProvider):
    """Tags each plugin route with its plugin's name, gives every operation a response, and
    documents the credentials and permissions of routes guarded with `require`."""

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        """Build quart-schema's path objects, then add the plugin tag, a default answer and
        the security requirements."""
        from ..app import CORE, owner_of

        paths, components = super().build_paths(rule)
        owner = owner_of(self._app, rule)
        permissions = getattr(self._app.view_functions[rule.endpoint], PERMISSIONS_ATTRIBUTE, None)
        for operations in paths.values():
            for operation in operations.values():
                if owner != CORE:
                    operation["tags"] = sorted({*operation.get("tags", []), owner})
                if not operation["responses"]:
                    operation["responses"] = {"200": {"description": "Success"}}
                if permissions is not None:
                    operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
                    operation["x-permissions"] = list(permissions)
                    responses = dict(operation["responses"])  # shared by the rule's methods
                    for status, answer in _GUARDED_RESPONSES.items():
                        responses.setdefault(status, answer)
                    operation["responses"] = responses
        return paths, components
