"""reputation: events, audit seeds and tasks, score tables; summaries' signed time

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_results") as batch:
        batch.add_column(sa.Column("created_at", sa.Float(), nullable=True))
        batch.create_index("ix_inference_results_created_at", ["created_at"], unique=False)
    # the summaries stored before this revision: their signed time from the log
    op.execute(
        "UPDATE inference_results SET created_at = (SELECT s.created_at FROM seen_envelopes s"
        " WHERE s.id = inference_results.envelope_id)"
    )
    op.create_table(
        "reputation_events",
        sa.Column("envelope_id", sa.String(length=66), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("sender", sa.String(length=42), nullable=False),
        sa.Column("subject", sa.String(length=42), nullable=True),
        sa.Column("request_id", sa.String(length=66), nullable=True),
        sa.Column("value", sa.String(length=80), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("envelope_id"),
    )
    op.create_index(
        "ix_reputation_events_epoch_kind", "reputation_events", ["epoch", "kind"], unique=False
    )
    op.create_index(
        "ix_reputation_events_sender_epoch", "reputation_events", ["sender", "epoch"], unique=False
    )
    op.create_index(
        "ix_reputation_events_request_id", "reputation_events", ["request_id"], unique=False
    )
    op.create_table(
        "audit_seeds",
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("seed", sa.String(length=66), nullable=False),
        sa.Column("committed", sa.Integer(), nullable=False),
        sa.Column("revealed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("epoch"),
    )
    op.create_table(
        "audit_tasks",
        sa.Column("request_id", sa.String(length=66), nullable=False),
        sa.Column("executor", sa.String(length=42), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_audit_tasks_state_due", "audit_tasks", ["state", "due_at"], unique=False)
    op.create_table(
        "reputation_tables",
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("tally", sa.LargeBinary(), nullable=False),
        sa.Column("scores", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("epoch"),
    )


def downgrade() -> None:
    op.drop_table("reputation_tables")
    op.drop_index("ix_audit_tasks_state_due", table_name="audit_tasks")
    op.drop_table("audit_tasks")
    op.drop_table("audit_seeds")
    op.drop_index("ix_reputation_events_request_id", table_name="reputation_events")
    op.drop_index("ix_reputation_events_sender_epoch", table_name="reputation_events")
    op.drop_index("ix_reputation_events_epoch_kind", table_name="reputation_events")
    op.drop_table("reputation_events")
    with op.batch_alter_table("inference_results") as batch:
        batch.drop_index("ix_inference_results_created_at")
        batch.drop_column("created_at")
