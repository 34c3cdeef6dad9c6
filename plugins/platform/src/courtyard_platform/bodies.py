"""The bodies of the go-web-nats platform API, as pydantic models for the OpenAPI
document. Requests are read and checked by `service.py` and `spec.py` (which report
every violation of a spec at once, with its field path); these models describe them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Environment(_Strict):
    """One environment: its variables (literal values or secret references)."""

    vars: dict[str, str] = Field(
        default_factory=dict,
        description="Names `^[A-Z_][A-Z0-9_]*$`; values up to 4096 characters, or "
        "`secret://delinea/<id>` / `secret://vaults/<vault>/<key>`.",
    )


class NetworkPolicies(_Strict):
    """Where the app's pods may talk: `internal` (its namespace) or `none`."""

    ingress: Literal["internal", "none"]
    egress: Literal["internal", "none"]


class ProjectSpec(_Strict):
    """A project's spec (`platform.example.com/v2`, kind `App`); no other keys."""

    apiVersion: Literal["platform.example.com/v2"]
    kind: Literal["App"]
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    runtime: str = Field(
        min_length=1, max_length=128, pattern=r"^[a-z0-9]+([_-][a-z0-9]+)*(\.[0-9]+(\.[0-9]+)*)?$"
    )
    capabilities: list[str] = Field(default_factory=list, description="Unique names.")
    environments: dict[str, Environment] = Field(description="At least one.")
    networkPolicies: NetworkPolicies


class Registration(BaseModel):
    """`POST /api/events/registration`."""

    action: Literal["create", "update", "delete"]
    project_id: str | None = Field(default=None, description="Required for update and delete.")
    spec: ProjectSpec | None = Field(default=None, description="Required for create and update.")


class SourceEvent(BaseModel):
    """`POST /api/webhooks/source`."""

    project_id: str
    repo: str | None = Field(default=None, description="Omitted or `source`.")
    branch: str | None = Field(
        default=None, description="`main`, `heads/main` or `refs/heads/main`."
    )
    ref: str | None = None
    commit: str | None = None


class Deployment(BaseModel):
    """`POST /api/events/deployment`."""

    project_id: str
    environment: str = Field(default="dev", description="Only `dev`.")


class Promotion(BaseModel):
    """`POST /api/events/promotion`."""

    project_id: str
    from_env: str
    to_env: str


class Step(BaseModel):
    """One step of an operation."""

    worker: str
    status: Literal["pending", "running", "done", "error", "skipped"]
    started_at: str | None
    ended_at: str | None
    message: str
    error: str
    artifacts: list[str]
    attempts: int
    consumer: str = Field(description="The pipeline consumer that ran it last.")


class Operation(BaseModel):
    """An operation and its steps."""

    id: str
    kind: Literal["create", "update", "delete", "ci", "deploy", "promote"]
    project_id: str
    status: Literal["queued", "running", "done", "error"]
    error: str
    params: dict[str, Any]
    requested: str
    started: str | None
    finished: str | None
    steps: list[Step]


class ProjectStatus(BaseModel):
    """Where a project stands."""

    phase: Literal["Ready", "Reconciling", "Deleting", "Error"]
    updated_at: str
    last_op_id: str
    last_op_kind: str
    message: str


class Project(BaseModel):
    """A project."""

    id: str
    created_at: str
    updated_at: str
    spec: ProjectSpec
    status: ProjectStatus
    deployments: dict[str, dict[str, Any]]


class Outcome(BaseModel):
    """An operation as accepted (`op`) and once finished (`final`, or its state when the
    wait ran out)."""

    project: Project
    op: Operation
    final: Operation


class Deleted(BaseModel):
    """A registration `delete`: `deleted` is true once the operation is done."""

    deleted: bool
    op: Operation
    final: Operation


class SourceOutcome(BaseModel):
    """The answer to a source event (always 202)."""

    accepted: bool
    reason: str
    trigger: Literal["source.main.webhook", "source.main.watcher"]
    project: str
    op: Operation | None
    commit: str


class Files(BaseModel):
    """A project's artifacts: relative paths."""

    files: list[str]


class Violation(BaseModel):
    """One broken rule of a spec."""

    field: str
    message: str


class SpecErrorDetail(BaseModel):
    """`INVALID_SPEC`, with every violation."""

    code: Literal["INVALID_SPEC"]
    message: str
    violations: list[Violation]


class SpecError(BaseModel):
    """The 400 answer to a spec that breaks rules."""

    error: SpecErrorDetail
