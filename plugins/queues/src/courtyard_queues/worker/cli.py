"""`courtyard worker`: run tasks of a queue served by a Courtyard queues server."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from pathlib import Path

import click


def _url(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    value = (value or "").strip().rstrip("/")
    if not value:
        raise click.BadParameter("is required (or set COURTYARD_URL or RUNQY_SERVER_URL)")
    if not re.match(r"^https?://[^/]", value, re.IGNORECASE):
        raise click.BadParameter(
            "must be an http:// or https:// URL, such as http://127.0.0.1:8000"
        )
    return value


def _queue(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    value = (value or "").strip()
    if not value:
        raise click.BadParameter("is required (or set COURTYARD_QUEUE or RUNQY_QUEUE)")
    return value


def default_worker_id() -> str:
    """`<host>-<pid>-<random>`: unique per run, and telling where the worker runs."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "worker"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@click.command(
    "worker",
    short_help="Run the tasks of a queue (runqy's stdio protocol).",
)
@click.option(
    "--server",
    envvar=["COURTYARD_URL", "RUNQY_SERVER_URL"],
    show_envvar=True,
    callback=_url,
    help="The Courtyard server with the queues plugin, such as http://127.0.0.1:8000.",
)
@click.option(
    "--api-key",
    envvar=["COURTYARD_API_KEY", "RUNQY_API_KEY"],
    show_envvar=True,
    help="Sent as 'Authorization: Bearer <key>'; it needs the queues:work permission.",
)
@click.option(
    "--queue",
    envvar=["COURTYARD_QUEUE", "RUNQY_QUEUE"],
    show_envvar=True,
    callback=_queue,
    help="The queue: 'inference' takes every sub-queue, 'inference.high' only that one.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Tasks in flight at once (one_shot: processes at once).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deployment"),
    show_default=True,
    help="Where the code is cloned and the virtual environment made (kept across runs).",
)
@click.option(
    "--worker-id",
    envvar="COURTYARD_WORKER_ID",
    show_envvar=True,
    help="This worker's id [default: <host>-<pid>-<random>].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds tasks in flight get to finish after SIGTERM before they are handed back.",
)
@click.option(
    "--installer",
    type=click.Choice(["auto", "uv", "pip"]),
    default="auto",
    show_default=True,
    help="What installs the requirements file: uv when on the PATH (auto), or pip.",
)
@click.option(
    "--python",
    "python",
    help="The Python the virtual environment is made from [default: the worker's].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
def worker_command(
    server: str,
    api_key: str | None,
    queue: str,
    concurrency: int,
    workdir: Path,
    worker_id: str | None,
    shutdown_timeout: float,
    installer: str,
    python: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the tasks of a queue (--queue) from a Courtyard queues server.

    The worker registers with the server, clones the queue's deployment (git_url at
    branch) into --workdir, makes a virtual environment with its requirements file,
    starts its startup_cmd with the vault values as environment variables, and hands it
    tasks as runqy's worker does (JSON lines on stdin and stdout). It talks to the
    server over HTTP only. SIGTERM or SIGINT stops it gracefully; a second one at once.
    """
    from courtyard.logs import configure_logging

    from .client import WorkerClient
    from .runner import Options, Worker, WorkerFailed

    configure_logging(log_level, log_format)
    options = Options(
        queue=queue,
        workdir=workdir,
        concurrency=concurrency,
        shutdown_timeout=shutdown_timeout,
        installer=installer,
        python=python,
    )

    async def main() -> None:
        client = WorkerClient(server, api_key, worker_id or default_worker_id())
        try:
            await Worker(client, options).run()
        finally:
            await client.close()

    try:
        asyncio.run(main())
    except WorkerFailed as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(1)
