"""revoked API keys (delegations)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 04:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delegation_revocations",
        sa.Column("delegation_id", sa.String(length=66), nullable=False),
        sa.Column("pack_id", sa.String(length=66), nullable=False),
        sa.Column("owner", sa.String(length=42), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.Column("envelope_id", sa.String(length=66), nullable=False),
        sa.Column("revocation", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("delegation_id"),
    )
    op.create_index(
        "ix_delegation_revocations_pack_id", "delegation_revocations", ["pack_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delegation_revocations_pack_id", table_name="delegation_revocations")
    op.drop_table("delegation_revocations")
