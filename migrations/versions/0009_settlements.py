"""settlements: requests answered at once from a reservation, certified in batches

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 07:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_requests") as b:
        b.add_column(sa.Column("settle_state", sa.String(length=8), nullable=True))
        b.add_column(sa.Column("charged", sa.BigInteger(), nullable=True))
        b.create_index("ix_inference_requests_settle", ["settle_state", "pack_id"], unique=False)
    op.create_table(
        "settlements",
        sa.Column("order_id", sa.String(length=66), nullable=False),
        sa.Column("pack_id", sa.String(length=66), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("order", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("settled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.create_index("ix_settlements_pack_id", "settlements", ["pack_id"], unique=False)
    op.create_index("ix_settlements_state", "settlements", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_settlements_state", table_name="settlements")
    op.drop_index("ix_settlements_pack_id", table_name="settlements")
    op.drop_table("settlements")
    with op.batch_alter_table("inference_requests") as b:
        b.drop_index("ix_inference_requests_settle")
        b.drop_column("charged")
        b.drop_column("settle_state")
