"""The pipeline's workers, as the original names them: what each step does.

A step is idempotent: run twice (its worker died after doing its work, before reporting
it, and the task was leased again), it leaves the same files and commits no change the
second time. Each returns a message and the artifacts it wrote (relative paths), or
raises `StepFailed` with a message for the operation (a failure no retry can mend).

Registration (`create`, `update`, `delete`) runs `registrar`, `repoBootstrap`,
`imageBuilder` and `manifestRenderer`; `ci` starts at `imageBuilder`; a deployment runs
`deployer` and a promotion `promoter`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from . import gitrepo, render

WORKERS: dict[str, list[str]] = {
    "create": ["registrar", "repoBootstrap", "imageBuilder", "manifestRenderer"],
    "update": ["registrar", "repoBootstrap", "imageBuilder", "manifestRenderer"],
    "delete": ["registrar", "repoBootstrap", "imageBuilder", "manifestRenderer"],
    "ci": ["imageBuilder", "manifestRenderer"],
    "deploy": ["deployer"],
    "promote": ["promoter"],
}
DEV = "dev"


class StepFailed(Exception):
    """A step that cannot succeed: the operation fails with this message."""


@dataclass
class Job:
    """Everything a step needs, read before it runs (the steps do no database work).

    :ivar root: the project's artifact folder.
    :ivar spec: the spec the operation works with (the project's, or the one it sets).
    :ivar deployments: what runs in each environment (image, commits, op).
    :ivar secrets: per environment, a digest of its resolved secret values (or None).
    """

    op_id: str
    kind: str
    project_id: str
    root: Path
    spec: dict[str, Any]
    params: dict[str, Any]
    deployments: dict[str, Any]
    secrets: dict[str, str | None] = field(default_factory=dict)
    registry: str = "registry.local/platform"
    buildkit_addr: str = ""
    hook_url: str = ""


@dataclass
class Outcome:
    """What a step did: a message, its artifacts, and deployments to record."""

    message: str
    artifacts: list[str] = field(default_factory=list)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)


def write(root: Path, relative: str, content: str | bytes) -> str:
    """Write an artifact atomically; :return: its relative path."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return relative


def run(worker: str, job: Job) -> Outcome:
    """Run one worker on `job` (blocking: called in a thread)."""
    if job.kind == "delete":
        return _delete(worker, job)
    return {
        "registrar": registrar,
        "repoBootstrap": repo_bootstrap,
        "imageBuilder": image_builder,
        "manifestRenderer": manifest_renderer,
        "deployer": deployer,
        "promoter": promoter,
    }[worker](job)


def registrar(job: Job) -> Outcome:
    """The registration record: `registration/project.yaml` and `registration.json`."""
    record = {
        "project_id": job.project_id,
        "op_id": job.op_id,
        "action": job.kind,
        "spec": job.spec,
    }
    files = [
        write(job.root, "registration/project.yaml", yaml.safe_dump(job.spec, sort_keys=False)),
        write(job.root, "registration/registration.json", json.dumps(record, indent=2) + "\n"),
    ]
    return Outcome(f"registered {job.spec['name']} ({job.kind})", files)


def repo_bootstrap(job: Job) -> Outcome:
    """The source repository (a starter app, the post-commit hook) and the manifests one."""
    source = job.root / "repos" / "source"
    manifests = job.root / "repos" / "manifests"
    made = gitrepo.ensure_repo(source)
    if gitrepo.head(source) is None:
        gitrepo.commit_files(
            source,
            render.starter_files(job.spec["name"], job.spec["runtime"]),
            f"starter app for {job.spec['runtime']}",
        )
    gitrepo.install_hook(source, job.project_id, job.hook_url)
    gitrepo.ensure_repo(manifests)
    if gitrepo.head(manifests) is None:
        readme = (
            f"# {job.spec['name']} manifests\n\nRendered by the platform: one folder per "
            "environment, each with deployment.yaml, service.yaml and rendered.yaml.\n"
        )
        gitrepo.commit_files(manifests, {"README.md": readme.encode()}, "manifests repository")
    verb = "created" if made else "checked"
    return Outcome(
        f"{verb} repos/source (main at {gitrepo.head(source)}) and repos/manifests; "
        f"post-commit hook posts to {job.hook_url}",
        [f"repos/source/{name}" for name in gitrepo.tracked_files(source)]
        + [f"repos/manifests/{name}" for name in gitrepo.tracked_files(manifests)],
    )


def image_builder(job: Job) -> Outcome:
    """The build plan (`build/Dockerfile`, `build/image.txt`, `build/build.json`), and a
    real build where a BuildKit daemon is reachable."""
    source = job.root / "repos" / "source"
    commit = gitrepo.head(source)
    if commit is None:
        raise StepFailed("the source repository has no commit on main to build")
    note = ""
    wanted = job.params.get("commit")
    if wanted and not commit.startswith(wanted) and wanted != commit:
        note = f" (the commit {wanted} named by the trigger is not main's head; built main)"
    text = render.dockerfile(job.spec["runtime"])
    image = render.image_ref(job.registry, job.spec["name"], text, commit)
    files = [
        write(job.root, "build/Dockerfile", text),
        write(job.root, "build/image.txt", image + "\n"),
    ]
    built, how = buildkit_build(job, source)
    files.append(
        write(
            job.root,
            "build/build.json",
            json.dumps(
                {"image": image, "source_commit": commit, "builder": how, "built": built},
                indent=2,
            )
            + "\n",
        )
    )
    if built:
        files.append("build/image.tar")
    return Outcome(f"{image} from {commit[:12]}{note}; {how}", files)


def buildkit_build(job: Job, source: Path) -> tuple[bool, str]:
    """Build the image with BuildKit when a daemon is reachable and `buildctl` is
    installed; :return: (built, what happened)."""
    addr = job.buildkit_addr
    if not addr or not _reachable(addr):
        return False, f"no BuildKit daemon reachable at {addr or '(none set)'}: plan only"
    buildctl = shutil.which("buildctl")
    if buildctl is None:
        return False, f"BuildKit reachable at {addr} but buildctl is not installed: plan only"
    command = [
        buildctl,
        "--addr",
        addr,
        "build",
        "--frontend",
        "dockerfile.v0",
        "--local",
        f"context={source}",
        "--local",
        f"dockerfile={job.root / 'build'}",
        "--output",
        f"type=oci,dest={job.root / 'build' / 'image.tar'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise StepFailed(f"BuildKit build failed: {result.stderr.strip()[-500:]}")
    return True, f"built with BuildKit at {addr}"


def _reachable(addr: str) -> bool:
    parsed = urlparse(addr)
    try:
        if parsed.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(parsed.path)
            return True
        if parsed.scheme == "tcp" and parsed.hostname and parsed.port:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=1):
                return True
    except OSError:
        return False
    return False


def render_env(job: Job, env: str, image: str, extra: dict[str, Any]) -> Outcome:
    """Render one environment's objects, keep them as artifacts, commit them to the
    manifests repository, and say what now runs there."""
    manifests = job.root / "repos" / "manifests"
    if gitrepo.head(manifests) is None:
        raise StepFailed("the manifests repository does not exist: register the project first")
    try:
        rendered = render.manifests(job.spec, env, image, job.secrets.get(env))
    except render.InvalidObject as exc:
        raise StepFailed(f"{env}: the rendered manifests are not valid: {exc}") from None
    files = [write(job.root, f"deploy/{env}/{name}", text) for name, text in rendered.items()]
    commit = gitrepo.commit_files(
        manifests,
        {f"{env}/{name}": text.encode() for name, text in rendered.items()},
        f"render {env} ({image}) for op {job.op_id}",
    )
    head = gitrepo.head(manifests)
    record = {"image": image, "op_id": job.op_id, "manifests_commit": head, **extra}
    message = f"{env}: {image}, " + (
        f"committed {commit[:12]}" if commit else "manifests unchanged"
    )
    return Outcome(message, files, {env: record})


def _built_image(job: Job) -> tuple[str, str]:
    build = job.root / "build" / "build.json"
    if not build.is_file():
        raise StepFailed("no image has been built for the project yet")
    data = json.loads(build.read_text())
    return data["image"], data["source_commit"]


def manifest_renderer(job: Job) -> Outcome:
    """Render dev with the new build (and, for an update, re-render every environment
    already deployed, with the image it runs)."""
    image, commit = _built_image(job)
    outcome = render_env(job, DEV, image, {"source_commit": commit})
    if job.kind == "update":
        for env, record in sorted(job.deployments.items()):
            if env == DEV or (env not in job.spec["environments"]):
                continue
            more = render_env(job, env, record["image"], _kept(record))
            outcome.message += "; " + more.message
            outcome.artifacts += more.artifacts
            outcome.deployments.update(more.deployments)
    return outcome


def deployer(job: Job) -> Outcome:
    """Deploy the latest build to dev."""
    image, commit = _built_image(job)
    return render_env(job, DEV, image, {"source_commit": commit})


def promoter(job: Job) -> Outcome:
    """Promote exactly the image the source environment runs to the target one."""
    source, target = job.params["from_env"], job.params["to_env"]
    record = job.deployments.get(source)
    if not record:
        raise StepFailed(f"nothing is deployed to {source}: deploy it first")
    outcome = render_env(job, target, record["image"], {**_kept(record), "promoted_from": source})
    rendered = (job.root / "deploy" / target / "rendered.yaml").read_text()
    outcome.artifacts.append(write(job.root, f"promotions/{source}-to-{target}/rendered.yaml",
                                   rendered))  # fmt: skip
    outcome.message = f"promoted {source} -> {target}: " + outcome.message
    return outcome


def _kept(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("source_commit",) if key in record}


def _delete(worker: str, job: Job) -> Outcome:
    """A delete's steps remove what the same worker made."""
    folder = {
        "registrar": "registration",
        "repoBootstrap": "repos",
        "imageBuilder": "build",
        "manifestRenderer": "deploy",
    }[worker]
    shutil.rmtree(job.root / folder, ignore_errors=True)
    if worker == "manifestRenderer":
        shutil.rmtree(job.root, ignore_errors=True)  # promotions and anything left
    return Outcome(f"removed {folder}/")
