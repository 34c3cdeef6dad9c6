"""Real git repositories, through dulwich: create one on `main`, commit files to it, read
its head. Blocking calls: the pipeline runs them in a thread.

Commits the platform makes carry the subject prefix `platform-sync:`, which the source
repository's hook ignores, so that the platform never triggers CI on its own commits.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path

# dulwich (about 3 MiB resident) is imported by the functions that use it, when a project
# has repositories, not when the plugin loads.

BRANCH = b"refs/heads/main"
AUTHOR = b"Courtyard platform <platform@courtyard.invalid>"
SYNC_PREFIX = "platform-sync:"


def ensure_repo(path: Path) -> bool:
    """A non-bare repository at `path` whose HEAD is `main`. :return: True when made now."""
    if (path / ".git").is_dir():
        return False
    from dulwich import porcelain

    path.mkdir(parents=True, exist_ok=True)
    repo = porcelain.init(str(path))
    try:
        repo.refs.set_symbolic_ref(b"HEAD", BRANCH)
    finally:
        repo.close()
    return True


def head(path: Path) -> str | None:
    """The commit `main` points at, or None (no repository, or no commit yet)."""
    if not (path / ".git").is_dir():
        return None
    from dulwich.repo import Repo

    repo = Repo(str(path))
    try:
        sha = repo.refs.as_dict().get(BRANCH)
        return None if sha is None else sha.decode()
    finally:
        repo.close()


def current_branch(path: Path) -> str | None:
    """The branch HEAD names (`main`), or None when detached or missing."""
    from dulwich.repo import Repo

    repo = Repo(str(path))
    try:
        target = repo.refs.read_ref(b"HEAD")
    finally:
        repo.close()
    if target is None or not target.startswith(b"ref: refs/heads/"):
        return None
    return target[len(b"ref: refs/heads/") :].decode()


def commit_files(
    path: Path, files: Mapping[str, bytes], message: str, remove: tuple[str, ...] = ()
) -> str | None:
    """Write `files` (relative paths) into the worktree, delete `remove`, and commit them
    on `main` when anything changed. :return: the new commit, or None when nothing did."""
    from dulwich import porcelain
    from dulwich.repo import Repo

    for relative, content in files.items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
    removed = [name for name in remove if (path / name).exists()]
    for name in removed:
        (path / name).unlink()
    repo = Repo(str(path))
    try:
        if files:
            porcelain.add(repo, paths=[str(path / name) for name in files])
        if removed:
            index = repo.open_index()
            for name in removed:
                key = name.encode()
                if key in index:
                    del index[key]
            index.write()
        staged = porcelain.status(repo, untracked_files="no").staged
        if not any(staged.values()) and BRANCH in repo.refs.as_dict():
            return None
        sha = porcelain.commit(
            repo,
            message=f"{SYNC_PREFIX} {message}".encode(),
            author=AUTHOR,
            committer=AUTHOR,
        )
        return sha.decode()
    finally:
        repo.close()


def tracked_files(path: Path) -> list[str]:
    """The files of `main`'s tree (relative paths), sorted."""
    from dulwich.object_store import iter_tree_contents
    from dulwich.repo import Repo

    repo = Repo(str(path))
    try:
        sha = repo.refs.as_dict().get(BRANCH)
        if sha is None:
            return []
        tree = repo[repo[sha].tree]  # type: ignore[attr-defined]
        return sorted(
            entry.path.decode()
            for entry in iter_tree_contents(repo.object_store, tree.id)
            if entry.path is not None
        )
    finally:
        repo.close()


HOOK = """#!/bin/sh
# Installed by Courtyard's platform plugin: tells the go-web-nats platform API about
# every commit on main, so that it runs CI. Commits the platform makes itself (subject
# prefix "platform-sync:") are ignored. A key for a protected server is read from
# COURTYARD_API_KEY at commit time; it is never written here.
branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null)
[ "$branch" = "main" ] || exit 0
subject=$(git log -1 --format=%s HEAD)
case "$subject" in platform-sync:*) exit 0 ;; esac
commit=$(git rev-parse HEAD)
body='{"project_id":"'{project_id}'","repo":"source","branch":"main","ref":"refs/heads/main","commit":"'"$commit"'"}'
if [ -n "$COURTYARD_API_KEY" ]; then
  curl -sS -m 10 -o /dev/null -X POST -H 'Content-Type: application/json' \\
    -H "Authorization: Bearer $COURTYARD_API_KEY" -d "$body" {url} || true
else
  curl -sS -m 10 -o /dev/null -X POST -H 'Content-Type: application/json' \\
    -d "$body" {url} || true
fi
exit 0
"""


def install_hook(path: Path, project_id: str, url: str) -> Path:
    """Install the `post-commit` hook posting commits on `main` to `url`."""
    script = HOOK.replace("{project_id}", project_id).replace("{url}", shlex.quote(url))
    hook = path / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    tmp = hook.with_suffix(".tmp")
    tmp.write_text(script, encoding="utf-8")
    os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    tmp.replace(hook)
    return hook
