"""Targets' connection settings: their shape per target type, sealing of their secret
values at rest, and masking in every answer.

- `courtyard`: `url` (http or https), `apiKey` (secret; an API key of that server with
  `apps:read` and `apps:install`), `timeoutSeconds`;
- `script`: `deployScript` (absolute path of an executable), `statusScript` (optional:
  prints the components it runs as JSON, for `drift`), `variables` (plain) and `secrets`
  (sealed) given to the scripts as environment variables.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field as Spec
from pydantic import field_validator

from .common import Body
from .crypto import Sealer

MASK = "********"
TargetType = Literal["courtyard", "script"]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class CourtyardConnection(Body):
    """How to reach a Courtyard server."""

    url: str = Spec(max_length=2048)
    api_key: str | None = Spec(default=None, max_length=4096)
    timeout_seconds: float = Spec(default=5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class ScriptConnection(Body):
    """Scripts that deploy on, and describe, a host."""

    deploy_script: str = Spec(max_length=4096)
    status_script: str | None = Spec(default=None, max_length=4096)
    variables: dict[str, str] = Spec(default_factory=dict, max_length=100)
    secrets: dict[str, str] = Spec(default_factory=dict, max_length=100)
    timeout_seconds: float = Spec(default=300.0, gt=0, le=3600)

    @field_validator("deploy_script", "status_script")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("variables", "secrets")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for name in value:
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"{name[:64]!r} is not an environment variable name")
        return value


MODELS: dict[str, type[Body]] = {"courtyard": CourtyardConnection, "script": ScriptConnection}


def seal(kind: str, spec: Body, sealer: Sealer, previous: dict[str, Any] | None) -> str:
    """The stored JSON of a validated connection: secrets sealed; a secret given as the
    mask keeps the previous value."""
    plain = spec.model_dump(by_alias=True)
    previous = previous or {}
    if kind == "courtyard":
        key = plain.get("apiKey")
        if key == MASK:
            plain["apiKey"] = previous.get("apiKey")
        elif key is not None:
            plain["apiKey"] = {"sealed": sealer.seal(key)}
    else:
        old = previous.get("secrets", {})
        plain["secrets"] = {
            name: old.get(name) if value == MASK else {"sealed": sealer.seal(value)}
            for name, value in plain["secrets"].items()
        }
        plain["secrets"] = {k: v for k, v in plain["secrets"].items() if v is not None}
    return json.dumps(plain, sort_keys=True)


def masked(stored: str) -> dict[str, Any]:
    """The connection as answered: every secret value replaced by the mask."""
    value = json.loads(stored)
    if value.get("apiKey") is not None:
        value["apiKey"] = MASK
    if "secrets" in value:
        value["secrets"] = dict.fromkeys(value["secrets"], MASK)
    return value


def opened(stored: str, sealer: Sealer) -> dict[str, Any]:
    """The connection with its secrets in clear, for the probes and deployments only."""
    value = json.loads(stored)
    if isinstance(value.get("apiKey"), dict):
        value["apiKey"] = sealer.open(value["apiKey"]["sealed"])
    if "secrets" in value:
        value["secrets"] = {k: sealer.open(v["sealed"]) for k, v in value["secrets"].items()}
    return value
