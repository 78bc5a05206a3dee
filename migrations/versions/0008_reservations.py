"""reservations: an API key's credits, a pack of their own made in the parent's sequence;
no more delegation running totals

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 04:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_packs") as b:
        b.add_column(sa.Column("parent_pack_id", sa.String(length=66), nullable=True))
        b.add_column(sa.Column("delegation_id", sa.String(length=66), nullable=True))
        b.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        b.create_index("ix_credit_packs_parent_pack_id", ["parent_pack_id"], unique=False)
        b.create_index("ix_credit_packs_delegation_id", ["delegation_id"], unique=False)
    with op.batch_alter_table("spend_certificates") as b:
        b.add_column(
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="spend")
        )
        b.add_column(sa.Column("delegate", sa.String(length=42), nullable=True))
        b.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
    # a delegate's spends now come from its reservation's pack: no running total to keep
    op.drop_table("delegation_totals")


def downgrade() -> None:
    op.create_table(
        "delegation_totals",
        sa.Column("delegation_id", sa.String(length=66), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("delegation_id"),
    )
    with op.batch_alter_table("spend_certificates") as b:
        b.drop_column("expires_at")
        b.drop_column("delegate")
        b.drop_column("kind")
    with op.batch_alter_table("credit_packs") as b:
        b.drop_index("ix_credit_packs_delegation_id")
        b.drop_index("ix_credit_packs_parent_pack_id")
        b.drop_column("expires_at")
        b.drop_column("delegation_id")
        b.drop_column("parent_pack_id")
