"""The optional source watcher (off by default): polls each project's source repository
for a new commit on `main` and triggers CI as `source.main.watcher`.

It goes through the same path as the webhook, so the per-commit deduplication covers
both: a commit the hook reported is ignored here, and the other way round. Commits the
platform made itself (`platform-sync:`) are not CI's business and are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import gitrepo
from .artifacts import Artifacts
from .service import WATCHER, Platform
from .store import DELETING


def head_and_subject(path: object) -> tuple[str, str] | None:
    """`main`'s commit and its subject, or None."""
    from pathlib import Path

    from dulwich.repo import Repo

    folder = Path(str(path))
    sha = gitrepo.head(folder)
    if sha is None:
        return None
    repo = Repo(str(folder))
    try:
        message = repo[sha.encode()].message  # type: ignore[attr-defined]
    finally:
        repo.close()
    return sha, message.decode("utf-8", "replace").split("\n", 1)[0]


async def watch_once(platform: Platform, artifacts: Artifacts, base_url: str) -> int:
    """One pass over every project. :return: how many CI operations it started."""
    started = 0
    for project in await platform.store.projects():
        if project["status"]["phase"] == DELETING:
            continue
        source = artifacts.folder(project["id"]) / "repos" / "source"
        found = await asyncio.to_thread(head_and_subject, source)
        if found is None or found[1].startswith(gitrepo.SYNC_PREFIX):
            continue
        answer = await platform.source(
            {"project_id": project["id"], "repo": "source", "branch": "main", "commit": found[0]},
            WATCHER,
            base_url,
        )
        started += bool(answer["accepted"])
    return started


async def watch_forever(
    platform: Platform,
    artifacts: Artifacts,
    base_url: str,
    seconds: float,
    stop: asyncio.Event,
    log: logging.Logger,
) -> None:
    """Run `watch_once` every `seconds` until `stop` is set."""
    failing = False
    while not stop.is_set():
        try:
            await watch_once(platform, artifacts, base_url)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.error("the source watcher failed: %r", exc)
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
