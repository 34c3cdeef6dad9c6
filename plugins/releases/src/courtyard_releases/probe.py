"""Looking at targets for real: a Courtyard server's readiness and installed apps over
HTTP, a script host through its scripts."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

# httpx (with the rich and click it loads, about 6 MiB resident) is imported by the
# functions that reach a target, not when the plugin loads.

MAX_OUTPUT = 1 << 20  # what is read of a status script's output


@dataclass(frozen=True)
class Health:
    """The result of one health check."""

    healthy: bool
    detail: str
    latency_ms: int


async def courtyard_health(connection: dict[str, Any]) -> Health:
    """GET the server's `/api/health/ready`: healthy on a 200."""
    import httpx

    started = time.monotonic()
    url = f"{connection['url']}/api/health/ready"
    try:
        async with httpx.AsyncClient(
            timeout=connection.get("timeoutSeconds", 5.0), follow_redirects=False
        ) as client:
            answer = await client.get(url)
    except httpx.HTTPError as exc:
        return Health(False, f"{url}: {type(exc).__name__}: {exc}"[:500], _ms(started))
    detail = f"{url} answered {answer.status_code}"
    return Health(answer.status_code == 200, detail, _ms(started))


def script_health(connection: dict[str, Any]) -> Health:
    """A script host is ready when its deploy script (and status script) can be run."""
    started = time.monotonic()
    for key in ("deployScript", "statusScript"):
        path = connection.get(key)
        if path is None:
            continue
        if not os.path.isfile(path):
            return Health(False, f"{key} {path} does not exist", _ms(started))
        if not os.access(path, os.X_OK):
            return Health(False, f"{key} {path} is not executable", _ms(started))
    return Health(True, "scripts present and executable", _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class ProbeError(Exception):
    """The target could not tell what it runs."""


async def courtyard_apps(connection: dict[str, Any]) -> dict[str, list[str]]:
    """The apps a Courtyard server has installed: name -> versions."""
    import httpx

    headers = (
        {"Authorization": f"Bearer {connection['apiKey']}"} if connection.get("apiKey") else {}
    )
    try:
        async with httpx.AsyncClient(timeout=connection.get("timeoutSeconds", 5.0)) as client:
            answer = await client.get(f"{connection['url']}/api/apps/", headers=headers)
    except httpx.HTTPError as exc:
        raise ProbeError(f"{type(exc).__name__}: {exc}") from None
    if answer.status_code != 200:
        raise ProbeError(f"GET /api/apps/ answered {answer.status_code}")
    try:
        apps = answer.json()
        return {str(a["name"]): [str(v) for v in a.get("versions", [])] for a in apps}
    except (ValueError, TypeError, KeyError):
        raise ProbeError("GET /api/apps/ did not answer a list of apps") from None


async def script_components(connection: dict[str, Any]) -> list[dict[str, Any]]:
    """What the status script prints: `{"components": [{"name", "version", "digest"}]}`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(connection.get("variables", {}))
    env.update(connection.get("secrets", {}))
    try:
        process = await asyncio.create_subprocess_exec(
            connection["statusScript"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        out, _ = await asyncio.wait_for(process.communicate(), connection["timeoutSeconds"])
    except (OSError, TimeoutError) as exc:
        raise ProbeError(f"status script: {type(exc).__name__}") from None
    if process.returncode != 0:
        raise ProbeError(f"status script exited with {process.returncode}")
    try:
        listed = json.loads(out[:MAX_OUTPUT])["components"]
        return [
            {"name": str(c["name"]), "version": str(c["version"]), "digest": c.get("digest")}
            for c in listed
        ]
    except (ValueError, TypeError, KeyError):
        raise ProbeError('status script did not print {"components": [...]}') from None
