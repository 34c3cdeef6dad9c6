"""What the go-web-nats platform API's endpoints do, apart from HTTP: registration,
source, deployment and promotion events, over the store and the pipeline.

One active operation per project: registration, deployment and promotion events (and the
projects endpoints) are refused with 409 `OP_IN_PROGRESS` while another operation of the
project is queued or running, because their callers wait for the outcome and act on it
(a spec edited in the meantime, a promotion of what dev ran a minute ago). Source events
are never refused (git hooks and CI systems cannot retry, and the API answers them 202
whatever happens): a CI operation for a busy project is accepted `queued` and starts when
the active one finishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from courtyard_sdk import ApiError

from . import steps
from .pipeline import Pipeline
from .spec import Violation, normalized, violations
from .store import DELETING, Accepted, Store

MAIN_REFS = ("main", "heads/main", "refs/heads/main")
WEBHOOK = "source.main.webhook"
WATCHER = "source.main.watcher"
MAX_ID = 200


class SpecRefused(Exception):
    """A spec that breaks rules: every violation, each with its field path."""

    def __init__(self, found: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.message}" for v in found))
        self.violations = found


def invalid(message: str) -> ApiError:
    """400 VALIDATION_ERROR."""
    return ApiError(400, "VALIDATION_ERROR", message)


def checked_spec(raw: Any, prefix: str = "") -> dict[str, Any]:
    """A valid spec, normalized. :raises SpecRefused: listing every violation."""
    found = violations(raw, prefix)
    if found:
        raise SpecRefused(found)
    return normalized(raw)


def text_field(body: dict[str, Any], key: str, required: bool = False) -> str:
    """A string field of a body ('' when absent). :raises ApiError: 400."""
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise invalid(f"{key} is required")
        return ""
    if not isinstance(value, str) or len(value) > MAX_ID or "\x00" in value:
        raise invalid(f"{key} must be a string of at most {MAX_ID} characters")
    return value


@dataclass
class Platform:
    """The API's operations (see the module docstring)."""

    store: Store
    pipeline: Pipeline
    wait_seconds: float

    # Projects and registration ----------------------------------------------------------

    async def create(self, spec: dict[str, Any], base_url: str) -> Accepted:
        """Accept a new project and its `create` operation."""
        accepted = await self.store.create(spec, steps.WORKERS["create"], {"base_url": base_url})
        await self.pipeline.submit(accepted)
        return accepted

    async def update(self, project_id: str, spec: dict[str, Any], base_url: str) -> Accepted:
        """Accept a project's `update` operation (its spec changes now)."""
        accepted = await self.store.start(
            project_id, "update", steps.WORKERS["update"], {"base_url": base_url}, spec=spec
        )
        await self.pipeline.submit(accepted)
        return accepted

    async def delete(self, project_id: str, base_url: str) -> Accepted:
        """Accept a project's `delete` operation."""
        accepted = await self.store.start(
            project_id, "delete", steps.WORKERS["delete"], {"base_url": base_url}
        )
        await self.pipeline.submit(accepted)
        return accepted

    async def registration(self, body: Any, base_url: str) -> dict[str, Any]:
        """`POST /api/events/registration`."""
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        action = body.get("action")
        if action not in ("create", "update", "delete"):
            raise invalid("action must be one of create, update, delete")
        project_id = text_field(body, "project_id", required=action != "create")
        if action == "delete":
            accepted = await self.delete(project_id, base_url)
            final = await self.pipeline.wait(accepted.op["id"], self.wait_seconds)
            deleted = final is not None and final["status"] == "done"
            return {"deleted": deleted, "op": accepted.op, "final": final}
        if "spec" not in body:
            raise SpecRefused([Violation("spec", "is required")])
        spec = checked_spec(body["spec"], "spec")
        if action == "create":
            accepted = await self.create(spec, base_url)
        else:
            accepted = await self.update(project_id, spec, base_url)
        return await self._finished(accepted)

    async def _finished(self, accepted: Accepted) -> dict[str, Any]:
        final = await self.pipeline.wait(accepted.op["id"], self.wait_seconds)
        try:
            project = await self.store.project(accepted.project["id"])
        except ApiError:
            project = accepted.project
        return {"project": project, "op": accepted.op, "final": final}

    # Deployments and promotions ---------------------------------------------------------

    async def deployment(self, body: Any, base_url: str) -> dict[str, Any]:
        """`POST /api/events/deployment`: deploy the latest build to dev."""
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        project_id = text_field(body, "project_id", required=True)
        environment = text_field(body, "environment") or steps.DEV
        if environment != steps.DEV:
            raise invalid(
                f"deployment events deploy to dev only; use a promotion event for {environment!r}"
            )
        await self.store.project(project_id)  # 404 before anything else
        accepted = await self.store.start(
            project_id,
            "deploy",
            steps.WORKERS["deploy"],
            {"environment": environment, "base_url": base_url},
        )
        await self.pipeline.submit(accepted)
        return await self._finished(accepted)

    async def promotion(self, body: Any, base_url: str) -> dict[str, Any]:
        """`POST /api/events/promotion`: the image `from_env` runs goes to `to_env`."""
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        project_id = text_field(body, "project_id", required=True)
        source = text_field(body, "from_env", required=True)
        target = text_field(body, "to_env", required=True)
        if source == target:
            raise invalid("from_env and to_env must differ")
        project = await self.store.project(project_id)
        defined = set(project["spec"]["environments"]) | {steps.DEV}
        for key, env in (("from_env", source), ("to_env", target)):
            if env not in defined:
                raise invalid(
                    f"{key} {env!r} is not an environment of the project "
                    f"({', '.join(sorted(defined))})"
                )
        running = project["deployments"].get(source)
        if not running:
            raise ApiError(409, "NOT_DEPLOYED", f"nothing is deployed to {source}: deploy it first")
        accepted = await self.store.start(
            project_id,
            "promote",
            steps.WORKERS["promote"],
            {
                "from_env": source,
                "to_env": target,
                "image": running["image"],
                "base_url": base_url,
            },
        )
        await self.pipeline.submit(accepted)
        return await self._finished(accepted)

    # Source events ----------------------------------------------------------------------

    async def source(self, body: Any, trigger: str, base_url: str) -> dict[str, Any]:
        """`POST /api/webhooks/source` (and the watcher): the documented 202 body."""
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        project_id = text_field(body, "project_id")
        repo = text_field(body, "repo")
        branch = text_field(body, "branch")
        ref = text_field(body, "ref")
        commit = text_field(body, "commit").strip()

        def ignored(reason: str) -> dict[str, Any]:
            return {
                "accepted": False,
                "reason": f"ignored: {reason}",
                "trigger": trigger,
                "project": project_id,
                "op": None,
                "commit": commit,
            }

        if not project_id:
            return ignored("project_id is required")
        if repo not in ("", "source"):
            return ignored(f"only source repo events trigger CI (repo {repo!r})")
        names = [name for name in (branch, ref) if name]
        if not names or any(name not in MAIN_REFS for name in names):
            return ignored(f"only main branch events trigger CI ({branch or ref or 'none'})")
        try:
            project = await self.store.project(project_id)
        except ApiError:
            return ignored("project not found")
        if project["status"]["phase"] == DELETING:
            return ignored("project is being deleted")
        if commit and not await self.store.record_commit(project_id, commit, trigger, None):
            return ignored("commit already processed")
        try:
            accepted = await self.store.start(
                project_id,
                "ci",
                steps.WORKERS["ci"],
                {"commit": commit, "trigger": trigger, "base_url": base_url},
                queue_if_busy=True,
            )
        except ApiError:
            if commit:
                await self.store.forget_commit(project_id, commit)
            return ignored("project not found")
        if commit:
            await self.store.set_commit_op(project_id, commit, accepted.op["id"])
        await self.pipeline.submit(accepted)
        return {
            "accepted": True,
            "reason": "",
            "trigger": trigger,
            "project": project_id,
            "op": accepted.op,
            "commit": commit,
        }
