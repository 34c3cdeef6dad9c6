"""The vaults' tables: vaults_vault and vaults_entry (sealed values, never plaintext).

Revision ID: vaults_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "vaults_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create both tables."""
    op.create_table(
        "vaults_vault",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_vaults_vault_name"),
    )
    op.create_table(
        "vaults_entry",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("vault_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("is_secret", sa.Boolean, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["vault_id"], ["vaults_vault.id"], ondelete="CASCADE", name="fk_vaults_entry_vault"
        ),
        sa.UniqueConstraint("vault_id", "key", name="uq_vaults_entry_vault_key"),
    )
    op.create_index("ix_vaults_entry_key_id", "vaults_entry", ["key_id"])


def downgrade() -> None:
    """Drop both tables (and every sealed value with them)."""
    op.drop_index("ix_vaults_entry_key_id", table_name="vaults_entry")
    op.drop_table("vaults_entry")
    op.drop_table("vaults_vault")
