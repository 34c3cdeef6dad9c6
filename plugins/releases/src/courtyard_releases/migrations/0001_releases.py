"""The release orchestrator's tables (see `tables.py`).

Revision ID: releases_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "releases_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table and index."""
    op.create_table(
        "releases_agent",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("capabilities", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("load", sa.Text(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_heartbeat_at", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_releases_agent_tenant_id", "releases_agent", ["tenant_id"], unique=False)
    op.create_table(
        "releases_approval",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("promotion_id", sa.String(length=32), nullable=False),
        sa.Column("approver", sa.String(length=256), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "promotion_id", "approver", name="uq_releases_approval"),
    )
    op.create_index(
        "ix_releases_approval_promotion_id", "releases_approval", ["promotion_id"], unique=False
    )
    op.create_index(
        "ix_releases_approval_tenant_id", "releases_approval", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_approval_policy",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("separation_of_duties", sa.Boolean(), nullable=False),
        sa.Column("approver_roles", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_approval_policy_environment_id",
        "releases_approval_policy",
        ["environment_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_approval_policy_tenant_id",
        "releases_approval_policy",
        ["tenant_id"],
        unique=False,
    )
    op.create_table(
        "releases_audit_report",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("starts_at", sa.String(length=32), nullable=False),
        sa.Column("ends_at", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_audit_report_tenant_id", "releases_audit_report", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_component",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("app_name", sa.String(length=100), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_releases_comp_name"),
    )
    op.create_index(
        "ix_releases_component_tenant_id", "releases_component", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_component_version",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("component_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=True),
        sa.Column("reference", sa.String(length=700), nullable=False),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("archive_format", sa.String(length=8), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "component_id", "version", name="uq_releases_cv"),
    )
    op.create_index(
        "ix_releases_component_version_component_id",
        "releases_component_version",
        ["component_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_component_version_tenant_id",
        "releases_component_version",
        ["tenant_id"],
        unique=False,
    )
    op.create_table(
        "releases_deployment",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("promotion_id", sa.String(length=32), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=256), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.String(length=32), nullable=True),
        sa.Column("finished_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_deployment_environment_id",
        "releases_deployment",
        ["environment_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_deployment_promotion_id", "releases_deployment", ["promotion_id"], unique=False
    )
    op.create_index(
        "ix_releases_deployment_release_id", "releases_deployment", ["release_id"], unique=False
    )
    op.create_index(
        "ix_releases_deployment_tenant_id", "releases_deployment", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_deployment_task",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=32), nullable=False),
        sa.Column("target_name", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("started_at", sa.String(length=32), nullable=True),
        sa.Column("finished_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_deployment_task_job_id", "releases_deployment_task", ["job_id"], unique=False
    )
    op.create_index(
        "ix_releases_deployment_task_tenant_id",
        "releases_deployment_task",
        ["tenant_id"],
        unique=False,
    )
    op.create_table(
        "releases_environment",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("order_index", sa.Integer(), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("separation_of_duties", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_releases_env_name"),
    )
    op.create_index(
        "ix_releases_environment_tenant_id", "releases_environment", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_evidence_packet",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("promotion_id", sa.String(length=32), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_evidence_packet_promotion_id",
        "releases_evidence_packet",
        ["promotion_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_evidence_packet_tenant_id",
        "releases_evidence_packet",
        ["tenant_id"],
        unique=False,
    )
    op.create_table(
        "releases_freeze_window",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("starts_at", sa.String(length=32), nullable=False),
        sa.Column("ends_at", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("exception_users", sa.Text(), nullable=False),
        sa.Column("exception_roles", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_freeze_window_environment_id",
        "releases_freeze_window",
        ["environment_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_freeze_window_tenant_id", "releases_freeze_window", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_promotion",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("requested_by", sa.String(length=256), nullable=False),
        sa.Column("requested_roles", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("scheduled_at", sa.String(length=32), nullable=True),
        sa.Column("depends_on", sa.Text(), nullable=False),
        sa.Column("gates", sa.Text(), nullable=False),
        sa.Column("active_key", sa.String(length=80), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.String(length=32), nullable=True),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "active_key", name="uq_releases_promotion_active"),
    )
    op.create_index(
        "ix_releases_promotion_environment_id",
        "releases_promotion",
        ["environment_id"],
        unique=False,
    )
    op.create_index(
        "ix_releases_promotion_release_id", "releases_promotion", ["release_id"], unique=False
    )
    op.create_index(
        "ix_releases_promotion_tenant_id", "releases_promotion", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_release",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("components", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("finalized_at", sa.String(length=32), nullable=True),
        sa.Column("finalized_by", sa.String(length=256), nullable=True),
        sa.Column("deprecated_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_releases_rel_name"),
    )
    op.create_index(
        "ix_releases_release_tenant_id", "releases_release", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_signing_key",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=128), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", name="uq_releases_signing_tenant"),
    )
    op.create_index(
        "ix_releases_signing_key_tenant_id", "releases_signing_key", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_sticker",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("release_name", sa.String(length=100), nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("components", sa.Text(), nullable=False),
        sa.Column("deployed_by", sa.String(length=256), nullable=False),
        sa.Column("deployed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_releases_sticker_target_id", "releases_sticker", ["target_id"], unique=False
    )
    op.create_index(
        "ix_releases_sticker_tenant_id", "releases_sticker", ["tenant_id"], unique=False
    )
    op.create_table(
        "releases_target",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=32), nullable=True),
        sa.Column("connection", sa.Text(), nullable=False),
        sa.Column("health_status", sa.String(length=16), nullable=False),
        sa.Column("health_detail", sa.String(length=2000), nullable=False),
        sa.Column("health_checked_at", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_releases_target_name"),
    )
    op.create_index(
        "ix_releases_target_environment_id", "releases_target", ["environment_id"], unique=False
    )
    op.create_index("ix_releases_target_tenant_id", "releases_target", ["tenant_id"], unique=False)


def downgrade() -> None:
    """Never run by Courtyard (a later revision undoes a change)."""
