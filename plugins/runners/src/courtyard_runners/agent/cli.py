"""`courtyard runner register | start`: the agent's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import httpx

from .agent import Agent, runner_id_of

DEFAULT_CONFIG = "courtyard-runner.toml"


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings and lists of strings: JSON is valid TOML for them


def save_config(path: Path, values: dict[str, Any]) -> None:
    """Write the agent's configuration (owner-only: it holds the token)."""
    text = "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def load_config(path: Path) -> dict[str, Any]:
    """The agent's configuration file (TOML: url, token, work_dir, executor)."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None


@click.group("runner")
def runner_command() -> None:
    """A CI runner agent for RustCI's runner API: register it, then start it."""


@runner_command.command("register")
@click.option("--url", required=True, help="The server, e.g. http://127.0.0.1:8000")
@click.option("--name", required=True, help="The runner's name")
@click.option(
    "--type",
    "kind",
    default="native",
    show_default=True,
    type=click.Choice(["native", "local", "docker", "kubernetes"]),
)
@click.option("--capability", "capabilities", multiple=True, help="Repeat for several")
@click.option("--tag", "tags", multiple=True, help="Repeat for several")
@click.option("--max-concurrent-jobs", type=click.IntRange(1, 1000), default=None)
@click.option("--api-key", envvar="COURTYARD_API_KEY", help="A key with runners:manage")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Where to save the runner's URL and token",
)
def register(
    url: str,
    name: str,
    kind: str,
    capabilities: tuple[str, ...],
    tags: tuple[str, ...],
    max_concurrent_jobs: int | None,
    api_key: str | None,
    config_path: Path,
) -> None:
    """Register a runner and save its token to --config (mode 0600)."""
    metadata: dict[str, Any] = {"os": sys.platform, "arch": os.uname().machine}
    if max_concurrent_jobs:
        metadata["max_concurrent_jobs"] = max_concurrent_jobs
    body = {
        "name": name,
        "type": kind,
        "host": os.uname().nodename,
        "capabilities": list(capabilities),
        "tags": list(tags),
        "metadata": metadata,
        "resources": {
            "cpu_cores": os.cpu_count() or 1,
            "memory_gb": round(_memory_gb(), 1),
        },
    }
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        answer = httpx.post(
            f"{url.rstrip('/')}/api/runners/register", json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    data = (
        answer.json()
        if answer.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if answer.status_code >= 400 or not data.get("success"):
        error = data.get("error") or {}
        raise click.ClickException(
            f"registration refused ({answer.status_code}): "
            f"{error.get('code', '')}: {error.get('message', answer.text[:200])}"
        )
    save_config(config_path, {"url": url, "token": data["registration_token"]})
    click.echo(data["runner_id"])
    click.echo(
        f"token saved to {config_path}; start with: courtyard runner start --config {config_path}",
        err=True,
    )


def _memory_gb() -> float:
    import psutil

    return float(psutil.virtual_memory().total) / 1024**3


@runner_command.command("start")
@click.option("--url", help="The server (or `url` in --config)")
@click.option("--token", envvar="COURTYARD_RUNNER_TOKEN", help="The registration token")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where job workspaces are made (default: a runner folder in the temp dir)",
)
@click.option(
    "--executor",
    type=click.Choice(["native", "isolation"]),
    default=None,
    help="Override the executor of the runner's configuration",
)
@click.option(
    "--grace",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM",
)
@click.option("--log-level", default="info", show_default=True)
def start(
    url: str | None,
    token: str | None,
    config_path: Path | None,
    work_dir: Path | None,
    executor: str | None,
    grace: float,
    log_level: str,
) -> None:
    """Run the agent: hold one long poll for jobs and control; run jobs; stream logs."""
    config: dict[str, Any] = {}
    if config_path is not None:
        config = load_config(config_path)
    elif token is None and Path(DEFAULT_CONFIG).exists():
        config = load_config(Path(DEFAULT_CONFIG))
    url = url or config.get("url")
    token = token or config.get("token")
    if not url or not token:
        raise click.ClickException("give --url and --token (or --config FILE)")
    try:
        runner_id = runner_id_of(token)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    executor = executor or config.get("executor")
    folder = work_dir or Path(
        config.get("work_dir")
        or Path(os.environ.get("TMPDIR", "/tmp")) / f"courtyard-runner-{runner_id}"
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agent = Agent(url, token, Path(folder), executor=executor, grace=grace)
    click.echo(f"runner {runner_id} polling {url}", err=True)
    sys.exit(asyncio.run(agent.run()))
