"""result summaries signed many to an envelope: a row per request, not per envelope

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 11:20:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _table(unique_envelope: bool) -> sa.Table:
    """inference_results as it is (for the batch copy), with envelope_id unique or not."""
    args: list = [
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("envelope_id", sa.String(length=66), nullable=False),
        sa.Column("request_id", sa.String(length=66), nullable=False),
        sa.Column("executor", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result_hash", sa.String(length=66), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("node_url", sa.String(length=512), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    ]
    if unique_envelope:
        args.append(sa.UniqueConstraint("envelope_id"))
    return sa.Table("inference_results", sa.MetaData(), *args)


def upgrade() -> None:
    # copy_from without the old (unnamed) UNIQUE(envelope_id): the table is rebuilt without it
    with op.batch_alter_table(
        "inference_results", copy_from=_table(unique_envelope=False), recreate="always"
    ) as b:
        b.create_unique_constraint("uq_inference_results_envelope_request", ["envelope_id", "request_id"])
        b.create_index("ix_inference_results_executor", ["executor"], unique=False)
        b.create_index("ix_inference_results_request_id", ["request_id"], unique=False)
        b.create_index("ix_inference_results_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    op.execute(
        "DELETE FROM inference_results WHERE id NOT IN"
        " (SELECT MIN(id) FROM inference_results GROUP BY envelope_id)"
    )
    # copy_from as it was (envelope_id unique, no pair constraint): rebuilt that way
    with op.batch_alter_table(
        "inference_results", copy_from=_table(unique_envelope=True), recreate="always"
    ) as b:
        b.create_index("ix_inference_results_executor", ["executor"], unique=False)
        b.create_index("ix_inference_results_request_id", ["request_id"], unique=False)
        b.create_index("ix_inference_results_created_at", ["created_at"], unique=False)
