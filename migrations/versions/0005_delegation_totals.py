"""delegation running totals; an index for the refunds still to apply

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 18:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delegation_totals",
        sa.Column("delegation_id", sa.String(length=66), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("delegation_id"),
    )
    op.create_index("ix_refunds_pack_applied", "refunds", ["pack_id", "applied"], unique=False)
    # the totals of the certificates stored before this revision
    op.execute(
        "INSERT INTO delegation_totals (delegation_id, spent) "
        "SELECT delegation_id, sum(amount) FROM spend_certificates "
        "WHERE delegation_id IS NOT NULL GROUP BY delegation_id"
    )


def downgrade() -> None:
    op.drop_index("ix_refunds_pack_applied", table_name="refunds")
    op.drop_table("delegation_totals")
