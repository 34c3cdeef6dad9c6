"""The plugin's tables, every one scoped to a tenant (`TenantScoped`).

Times are stored as ISO 8601 UTC text with microseconds (`2026-01-31T12:00:00.000000Z`),
which sorts and compares as the times do on SQLite and PostgreSQL alike; lists and
mappings are stored as JSON text.
"""

from __future__ import annotations

import uuid

from courtyard_sdk.db import TenantScoped, model_base
from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field

Model = model_base()


def new_id() -> str:
    """A fresh random id."""
    return uuid.uuid4().hex


class Environment(TenantScoped, Model, table=True):
    """A stage releases are promoted through, in `order_index` order."""

    __tablename__ = "releases_environment"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_releases_env_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    description: str = Field(default="", max_length=1000)
    order_index: int = 0
    required_approvals: int = 0
    separation_of_duties: bool = False
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)


class FreezeWindow(TenantScoped, Model, table=True):
    """A time range in which promotions into an environment are blocked."""

    __tablename__ = "releases_freeze_window"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    environment_id: str = Field(index=True, max_length=32)
    starts_at: str = Field(max_length=32)
    ends_at: str = Field(max_length=32)
    reason: str = Field(default="", max_length=1000)
    exception_users: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    exception_roles: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)


class Target(TenantScoped, Model, table=True):
    """Where an environment's releases run: a Courtyard server or a script."""

    __tablename__ = "releases_target"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_releases_target_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    type: str = Field(max_length=32)
    environment_id: str = Field(index=True, max_length=32)
    # The agent that deploys on it; none: this server does.
    agent_id: str | None = Field(default=None, max_length=32)
    # Connection settings as JSON, their secret values sealed (crypto.Sealer).
    connection: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    health_status: str = Field(default="unknown", max_length=16)
    health_detail: str = Field(default="", max_length=2000)
    health_checked_at: str | None = Field(default=None, max_length=32)
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)


class Agent(TenantScoped, Model, table=True):
    """A program that deploys on targets; it proves itself with a token stored hashed."""

    __tablename__ = "releases_agent"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=64)
    token_prefix: str = Field(max_length=16)
    capabilities: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    labels: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    load: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    version: str = Field(default="", max_length=64)
    status: str = Field(default="registered", max_length=16)
    last_heartbeat_at: str | None = Field(default=None, max_length=32)
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)


class Component(TenantScoped, Model, table=True):
    """A deployable unit: a Courtyard app (archives) or an OCI image (references)."""

    __tablename__ = "releases_component"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_releases_comp_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    kind: str = Field(max_length=32)
    app_name: str = Field(default="", max_length=100)
    image: str = Field(default="", max_length=512)
    description: str = Field(default="", max_length=1000)
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)


class ComponentVersion(TenantScoped, Model, table=True):
    """One version of a component: an archive by its sha256, or an image reference."""

    __tablename__ = "releases_component_version"
    __table_args__ = (
        UniqueConstraint("tenant_id", "component_id", "version", name="uq_releases_cv"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    component_id: str = Field(index=True, max_length=32)
    version: str = Field(max_length=128)
    digest: str | None = Field(default=None, max_length=80)
    reference: str = Field(max_length=700)
    size: int | None = None
    archive_format: str | None = Field(default=None, max_length=8)
    seq: int = 0
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)


class Release(TenantScoped, Model, table=True):
    """A named set of component versions: draft, then finalized (immutable), deprecated."""

    __tablename__ = "releases_release"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_releases_rel_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    description: str = Field(default="", max_length=1000)
    status: str = Field(default="draft", max_length=16)
    components: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)
    finalized_at: str | None = Field(default=None, max_length=32)
    finalized_by: str | None = Field(default=None, max_length=256)
    deprecated_at: str | None = Field(default=None, max_length=32)


class ApprovalPolicy(TenantScoped, Model, table=True):
    """Extra approval rules for an environment: more approvers, roles they must hold."""

    __tablename__ = "releases_approval_policy"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    environment_id: str = Field(index=True, max_length=32)
    required_approvals: int = 1
    separation_of_duties: bool = True
    approver_roles: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)


class Promotion(TenantScoped, Model, table=True):
    """A request to move a finalized release into an environment."""

    __tablename__ = "releases_promotion"
    __table_args__ = (
        UniqueConstraint("tenant_id", "active_key", name="uq_releases_promotion_active"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    release_id: str = Field(index=True, max_length=32)
    environment_id: str = Field(index=True, max_length=32)
    status: str = Field(max_length=24)
    requested_by: str = Field(max_length=256)
    requested_roles: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    reason: str = Field(default="", max_length=1000)
    scheduled_at: str | None = Field(default=None, max_length=32)
    depends_on: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    gates: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    # "<release>:<environment>" while pending, NULL once decided: one pending promotion of
    # a release into an environment at a time, even when two are asked for at once.
    active_key: str | None = Field(default=None, max_length=80)
    revision: int = 0
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)
    decided_at: str | None = Field(default=None, max_length=32)
    decided_by: str | None = Field(default=None, max_length=256)


class Approval(TenantScoped, Model, table=True):
    """One approver's decision on a promotion (one per approver)."""

    __tablename__ = "releases_approval"
    __table_args__ = (
        UniqueConstraint("tenant_id", "promotion_id", "approver", name="uq_releases_approval"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    promotion_id: str = Field(index=True, max_length=32)
    approver: str = Field(max_length=256)
    decision: str = Field(max_length=16)
    comment: str = Field(default="", max_length=2000)
    created_at: str = Field(max_length=32)


class Deployment(TenantScoped, Model, table=True):
    """A deployment job: a release put on every target of an environment at once."""

    __tablename__ = "releases_deployment"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(default="deploy", max_length=16)
    strategy: str = Field(default="all-at-once", max_length=32)
    promotion_id: str = Field(index=True, max_length=32)
    release_id: str = Field(index=True, max_length=32)
    environment_id: str = Field(index=True, max_length=32)
    status: str = Field(max_length=16)
    requested_by: str = Field(default="", max_length=256)
    error: str = Field(default="", max_length=2000)
    # "<host>:<pid>" of the process running it, to tell a crashed run from a live one.
    owner: str = Field(default="", max_length=300)
    created_at: str = Field(max_length=32)
    started_at: str | None = Field(default=None, max_length=32)
    finished_at: str | None = Field(default=None, max_length=32)


class DeploymentTask(TenantScoped, Model, table=True):
    """One target's part of a deployment job, with its log."""

    __tablename__ = "releases_deployment_task"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    job_id: str = Field(index=True, max_length=32)
    target_id: str = Field(max_length=32)
    target_name: str = Field(max_length=100)
    status: str = Field(default="pending", max_length=16)
    logs: str = Field(default="", sa_column=Column(Text, nullable=False))
    error: str = Field(default="", max_length=2000)
    started_at: str | None = Field(default=None, max_length=32)
    finished_at: str | None = Field(default=None, max_length=32)


class Sticker(TenantScoped, Model, table=True):
    """What a target runs: the release and component versions deployed there."""

    __tablename__ = "releases_sticker"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    target_id: str = Field(index=True, max_length=32)
    environment_id: str = Field(max_length=32)
    release_id: str = Field(max_length=32)
    release_name: str = Field(max_length=100)
    deployment_id: str = Field(max_length=32)
    components: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    deployed_by: str = Field(max_length=256)
    deployed_at: str = Field(max_length=32)


class SigningKey(TenantScoped, Model, table=True):
    """A tenant's Ed25519 evidence key; the private half sealed, never answered."""

    __tablename__ = "releases_signing_key"
    __table_args__ = (UniqueConstraint("tenant_id", name="uq_releases_signing_tenant"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    public_key: str = Field(max_length=128)
    private_key: str = Field(sa_column=Column(Text, nullable=False))
    created_at: str = Field(max_length=32)


class EvidencePacket(TenantScoped, Model, table=True):
    """A signed record of a decided promotion."""

    __tablename__ = "releases_evidence_packet"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(max_length=32)
    promotion_id: str = Field(index=True, max_length=32)
    release_id: str = Field(max_length=32)
    environment_id: str = Field(max_length=32)
    content: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    key_id: str = Field(max_length=32)
    created_at: str = Field(max_length=32)


class AuditReport(TenantScoped, Model, table=True):
    """A signed report of what happened to releases over a time range."""

    __tablename__ = "releases_audit_report"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    starts_at: str = Field(max_length=32)
    ends_at: str = Field(max_length=32)
    content: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    key_id: str = Field(max_length=32)
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)


class PluginSetting(TenantScoped, Model, table=True):
    """A tenant's choice about one of the server's plugins: disabled for it, or not."""

    __tablename__ = "releases_plugin_setting"
    __table_args__ = (UniqueConstraint("tenant_id", "plugin", name="uq_releases_plugin"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    plugin: str = Field(max_length=214)
    enabled: bool = True
    updated_by: str = Field(max_length=256)
    updated_at: str = Field(max_length=32)


class PluginInstance(TenantScoped, Model, table=True):
    """A tenant's named configuration of a plugin, checked against its settings schema."""

    __tablename__ = "releases_plugin_instance"
    __table_args__ = (
        UniqueConstraint("tenant_id", "plugin_id", "name", name="uq_releases_instance_name"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    plugin_id: str = Field(index=True, max_length=214)
    name: str = Field(max_length=100)
    config: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)
