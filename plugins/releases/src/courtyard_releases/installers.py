"""Putting a release on one target: a Courtyard server through its apps API, or a script
host through its deploy script. Each returns what it installed, and writes its log."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .blobs import BlobStore

if TYPE_CHECKING:
    # httpx (with the rich and click it loads, about 6 MiB resident) is imported when a target
    # is reached, not when the plugin loads.
    import httpx

MAX_LOG = 64 * 1024  # what is kept of a task's log


class InstallError(Exception):
    """The target refused or failed the deployment."""


class Log:
    """A task's log, capped."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        """Add a line (cut once the log is full)."""
        if self.size >= MAX_LOG:
            return
        text = text[: MAX_LOG - self.size]
        self.lines.append(text)
        self.size += len(text) + 1

    def text(self) -> str:
        """The log so far."""
        return "\n".join(self.lines)


def _headers(connection: dict[str, Any]) -> dict[str, str]:
    if connection.get("apiKey"):
        return {"Authorization": f"Bearer {connection['apiKey']}"}
    return {"X-Courtyard-Internal": "true"}  # an open server: say we are a program


Archive = Callable[[dict[str, Any]], Awaitable[bytes]]


def from_store(blobs: BlobStore) -> Archive:
    """Read a component's archive from this server's store."""

    async def read(component: dict[str, Any]) -> bytes:
        return await asyncio.to_thread(blobs.path(component["digest"]).read_bytes)

    return read


async def courtyard(
    connection: dict[str, Any],
    components: list[dict[str, Any]],
    archive: Archive,
    log: Log,
    replaced: dict[str, str],
) -> list[dict[str, Any]]:
    """Upload each app archive to `POST /api/apps/upload`, then check the version serves;
    `replaced` (app -> version) are versions to remove once theirs is installed (a
    rollback puts an older version back in front)."""
    import httpx

    installed: list[dict[str, Any]] = []
    url = connection["url"]
    timeout = connection.get("timeoutSeconds", 5.0)
    async with httpx.AsyncClient(
        timeout=max(timeout, 30.0), headers=_headers(connection)
    ) as client:
        for component in components:
            if component["kind"] != "courtyard-app":
                raise InstallError(f"{component['name']}: a courtyard target runs apps only")
            data = await archive(component)
            ext = "zip" if component.get("archiveFormat") == "zip" else "tgz"
            name = f"{component['appName']}-{component['version']}.{ext}"
            log.write(f"upload {name} ({len(data)} bytes, {component['digest']}) to {url}")
            try:
                answer = await client.post(
                    f"{url}/api/apps/upload",
                    params={"overwrite": "true"},
                    files={"file": (name, data, "application/octet-stream")},
                )
            except httpx.HTTPError as exc:
                raise InstallError(f"upload failed: {type(exc).__name__}: {exc}") from None
            log.write(f"POST /api/apps/upload answered {answer.status_code}")
            if answer.status_code not in (200, 201):
                raise InstallError(f"upload refused: {answer.status_code} {answer.text[:300]}")
            app = answer.json()["data"]["app"]
            await _serves(client, url, app["name"], app["version"], log)
            old = replaced.get(app["name"])
            if old and old != app["version"]:
                gone = await client.delete(f"{url}/api/apps/{app['name']}/{old}")
                log.write(f"removed {app['name']} {old}: {gone.status_code}")
            installed.append({**component, "app": app["name"], "appVersion": app["version"]})
    return installed


async def _serves(client: httpx.AsyncClient, url: str, app: str, version: str, log: Log) -> None:
    """The installed version answers below 500 at its own URL."""
    import httpx

    try:
        answer = await client.get(f"{url}/{app}@{version}/", follow_redirects=True)
    except httpx.HTTPError as exc:
        raise InstallError(f"{app}@{version} does not answer: {type(exc).__name__}") from None
    log.write(f"GET /{app}@{version}/ answered {answer.status_code}")
    if answer.status_code >= 500 or answer.status_code == 404:
        raise InstallError(f"{app}@{version} does not serve: {answer.status_code}")


def _variable(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


async def script(
    connection: dict[str, Any], components: list[dict[str, Any]], release: dict[str, Any], log: Log
) -> list[dict[str, Any]]:
    """Run the deploy script with the release in its environment: `RELEASE_ID`,
    `RELEASE_NAME`, `COMPONENTS` (JSON), and `COMPONENT_<NAME>_REFERENCE`, `_VERSION`,
    `_DIGEST` for each component."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(connection.get("variables", {}))
    env.update(connection.get("secrets", {}))
    env.update(
        RELEASE_ID=release["id"],
        RELEASE_NAME=release["name"],
        COMPONENTS=json.dumps(components, sort_keys=True),
    )
    for component in components:
        prefix = f"COMPONENT_{_variable(component['name'])}"
        env[f"{prefix}_REFERENCE"] = component["reference"]
        env[f"{prefix}_VERSION"] = component["version"]
        env[f"{prefix}_DIGEST"] = component.get("digest") or ""
    program = connection["deployScript"]
    log.write(f"run {program}")
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(Path(program).parent),
        )
    except OSError as exc:
        raise InstallError(f"cannot run {program}: {exc.strerror}") from None
    try:
        out, _ = await asyncio.wait_for(process.communicate(), connection["timeoutSeconds"])
    except TimeoutError:
        process.kill()
        await process.wait()
        raise InstallError(f"{program} ran longer than {connection['timeoutSeconds']} s") from None
    text = out[:MAX_LOG].decode(errors="replace").rstrip()
    for secret in connection.get("secrets", {}).values():
        if secret:
            text = text.replace(secret, "[redacted]")  # a script that echoes a secret
    log.write(text)
    if process.returncode != 0:
        raise InstallError(f"{program} exited with {process.returncode}")
    return [dict(component) for component in components]
