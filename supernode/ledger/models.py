"""Ledger tables (SQLAlchemy 2 declarative). All amounts are integers.

Alembic migrations in `migrations/` create these; keep the two in step
(`alembic revision --autogenerate` against a fresh database shows any drift).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SeenEnvelope(Base):
    """Every envelope this daemon accepted, once: the duplicate filter (it survives a
    restart) and the log that anti-entropy serves from, in local order (``seq``)."""

    __tablename__ = "seen_envelopes"
    # AUTOINCREMENT: a pruned seq is never reused, so peers' cursors stay valid
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(66), unique=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    sender: Mapped[str] = mapped_column(String(42), index=True)
    recipient: Mapped[str | None] = mapped_column(String(42))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    received_at: Mapped[float] = mapped_column(Float)
    # the peer that handed it over (None: made here); anti-entropy never serves it back
    received_from: Mapped[str | None] = mapped_column(String(42))
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class Message(Base):
    """A supernode-to-supernode message (the Pastel layer's `messages`)."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    envelope_id: Mapped[str] = mapped_column(
        String(66), ForeignKey("seen_envelopes.id"), unique=True
    )
    sending_sn_address: Mapped[str] = mapped_column(String(42), index=True)
    receiving_sn_address: Mapped[str | None] = mapped_column(String(42), index=True)
    message_type: Mapped[str] = mapped_column(String(64), index=True)
    message_body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(132))
    timestamp: Mapped[int] = mapped_column(BigInteger, index=True)
    received_at: Mapped[float] = mapped_column(Float)


class MessageMetadata(Base):
    """Counts and bytes of messages by type."""

    __tablename__ = "message_metadata"

    message_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    total_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class MessageSenderMetadata(Base):
    """Counts and bytes of messages by sending supernode."""

    __tablename__ = "message_sender_metadata"

    sending_sn_address: Mapped[str] = mapped_column(String(42), primary_key=True)
    total_messages_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    total_data_sent_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class MessageReceiverMetadata(Base):
    """Counts and bytes of messages by receiving supernode ('*' for a broadcast)."""

    __tablename__ = "message_receiver_metadata"

    receiving_sn_address: Mapped[str] = mapped_column(String(42), primary_key=True)
    total_messages_received: Mapped[int] = mapped_column(BigInteger, default=0)
    total_data_received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class MessageSenderReceiverMetadata(Base):
    """Counts and bytes of messages by (sender, receiver) pair."""

    __tablename__ = "message_sender_receiver_metadata"

    sending_sn_address: Mapped[str] = mapped_column(String(42), primary_key=True)
    receiving_sn_address: Mapped[str] = mapped_column(String(42), primary_key=True)
    total_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    total_data_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class UserMessage(Base):
    """A message between two user addresses, relayed and attested by a supernode."""

    __tablename__ = "user_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    envelope_id: Mapped[str] = mapped_column(
        String(66), ForeignKey("seen_envelopes.id"), unique=True
    )
    from_address: Mapped[str] = mapped_column(String(42), index=True)
    to_address: Mapped[str] = mapped_column(String(42), index=True)
    message_body: Mapped[str] = mapped_column(Text)
    relayed_by: Mapped[str] = mapped_column(String(42))
    timestamp: Mapped[int] = mapped_column(BigInteger, index=True)
    received_at: Mapped[float] = mapped_column(Float)


class Peer(Base):
    """What this daemon knows of each member: liveness, collateral, sync cursor, ban."""

    __tablename__ = "peers"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    public_key: Mapped[str] = mapped_column(String(132))
    collateral_wei: Mapped[int | None] = mapped_column(Text)  # decimal text: wei exceeds 64 bits
    eligible: Mapped[bool] = mapped_column(default=False)
    collateral_checked_at: Mapped[float | None] = mapped_column(Float)
    collateral_block: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    sync_cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    penalty_points: Mapped[int] = mapped_column(Integer, default=0)
    banned_until: Mapped[float | None] = mapped_column(Float)


class PeerPenalty(Base):
    """One penalty given to a peer, with the reason (kept for inspection and for bans)."""

    __tablename__ = "peer_penalties"
    __table_args__ = (Index("ix_peer_penalties_peer_at", "peer_address", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    peer_address: Mapped[str] = mapped_column(String(42))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    envelope_id: Mapped[str | None] = mapped_column(String(66))
    points: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)


class UsedChallenge(Base):
    """Authentication challenges already answered (single use, even across a restart)."""

    __tablename__ = "used_challenges"
    __table_args__ = (UniqueConstraint("challenge_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    challenge_id: Mapped[str] = mapped_column(String(66))
    address: Mapped[str] = mapped_column(String(42))
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class CreditPurchase(Base):
    """A credit-pack purchase as this daemon knows it: quoted → pending → certified, or
    refused with the reason. The quote (terms + agreement signatures) is kept whole."""

    __tablename__ = "credit_purchases"

    purchase_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    buyer: Mapped[str] = mapped_column(String(42), index=True)
    credits: Mapped[int] = mapped_column(BigInteger)
    amount_wei: Mapped[str] = mapped_column(Text)  # decimal text: wei exceeds 64 bits
    expiry_block: Mapped[int] = mapped_column(BigInteger)
    quote: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON of the signed quote
    status: Mapped[str] = mapped_column(String(16), index=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), index=True)
    # this daemon was asked to confirm it: the pending-purchases job finishes it
    confirming: Mapped[bool] = mapped_column(default=False)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PaymentUsed(Base):
    """A payment transaction bound to the one purchase it pays for; written before this
    daemon signs for it, so it never signs a second pack for the same transaction."""

    __tablename__ = "payments_used"
    __table_args__ = (UniqueConstraint("chain_id", "tx_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    purchase_id: Mapped[str] = mapped_column(String(66))
    at: Mapped[float] = mapped_column(Float)


class CreditPack(Base):
    """A certified credit pack: the terms and the quorum certificate that certifies them."""

    __tablename__ = "credit_packs"

    pack_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    buyer: Mapped[str] = mapped_column(String(42), index=True)
    credits: Mapped[int] = mapped_column(BigInteger)
    remaining_credits: Mapped[int] = mapped_column(BigInteger)
    # the sequence number the next spend order must carry (certificates applied so far)
    next_sequence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    amount_wei: Mapped[str] = mapped_column(Text)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    block_number: Mapped[int] = mapped_column(BigInteger)
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    certified_at: Mapped[float] = mapped_column(Float)
    # A reservation (an API key's credits): a pack of its own, made when the reservation
    # certified in the parent's sequence is applied; its buyer is the key's delegate.
    parent_pack_id: Mapped[str | None] = mapped_column(String(66), index=True)
    delegation_id: Mapped[str | None] = mapped_column(String(66), index=True)
    expires_at: Mapped[float | None] = mapped_column(Float)  # the delegation's expiry


class SpendVote(Base):
    """This daemon's own vote: at most one order per (pack, sequence), ever. Written
    durably before the vote leaves the process; asked again, the same vote is returned."""

    __tablename__ = "spend_votes"
    __table_args__ = (UniqueConstraint("pack_id", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pack_id: Mapped[str] = mapped_column(String(66))
    sequence: Mapped[int] = mapped_column(BigInteger)
    order_id: Mapped[str] = mapped_column(String(66))
    amount: Mapped[int] = mapped_column(BigInteger)
    executor: Mapped[str] = mapped_column(String(42))
    signature: Mapped[str] = mapped_column(String(132))
    voted_at: Mapped[float] = mapped_column(Float)


class SpendCertificate(Base):
    """A quorum-certified spend order (the inference confirmation). Applied to its pack
    strictly in sequence order; one per (pack, sequence)."""

    __tablename__ = "spend_certificates"
    __table_args__ = (UniqueConstraint("pack_id", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pack_id: Mapped[str] = mapped_column(String(66), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    order_id: Mapped[str] = mapped_column(String(66), unique=True)
    request_id: Mapped[str] = mapped_column(String(66), index=True)
    executor: Mapped[str] = mapped_column(String(42))
    spender: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(BigInteger)
    # the delegation a reservation funds (kind "reserve"), else None
    delegation_id: Mapped[str | None] = mapped_column(String(66), index=True)
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    applied: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[float] = mapped_column(Float)
    # "spend"; "reserve" (makes the reservation's pack when applied); "close" (gives a
    # reservation's remaining credits back to its parent pack)
    kind: Mapped[str] = mapped_column(String(8), default="spend", server_default="spend")
    delegate: Mapped[str | None] = mapped_column(String(42))  # a reservation's
    expires_at: Mapped[float | None] = mapped_column(Float)  # a reservation's


class DelegationRevocation(Base):
    """An API key its owner revoked: no member votes for an order under it any more."""

    __tablename__ = "delegation_revocations"

    delegation_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(66), index=True)
    owner: Mapped[str] = mapped_column(String(42))
    revoked_at: Mapped[float] = mapped_column(Float)  # the owner's signing time
    envelope_id: Mapped[str] = mapped_column(String(66))  # the member's that carried it
    revocation: Mapped[bytes] = mapped_column(LargeBinary)  # the owner's, canonical JSON
    received_at: Mapped[float] = mapped_column(Float)


class Refund(Base):
    """Credits given back by a request's executor (unused tokens, a failed run), bounded
    by what was certified for that request; applied once its spend is applied."""

    __tablename__ = "refunds"
    # a pack's refunds still to apply, found without reading those applied long ago
    __table_args__ = (Index("ix_refunds_pack_applied", "pack_id", "applied"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    envelope_id: Mapped[str] = mapped_column(String(66), unique=True)
    pack_id: Mapped[str] = mapped_column(String(66), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(66), index=True)
    executor: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(64))
    applied: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[float] = mapped_column(Float)


class InferenceRequest(Base):
    """A request this daemon quoted and executes: its quote, spend, run and result."""

    __tablename__ = "inference_requests"
    # the requests still to settle, found without reading those settled long ago
    __table_args__ = (Index("ix_inference_requests_settle", "settle_state", "pack_id"),)

    request_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    usage_request_id: Mapped[str] = mapped_column(String(66), unique=True)
    requester: Mapped[str] = mapped_column(String(42), index=True)
    pack_id: Mapped[str] = mapped_column(String(66), index=True)
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    quote_expires_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), index=True)
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    order_id: Mapped[str | None] = mapped_column(String(66))
    result_text: Mapped[str | None] = mapped_column(Text)
    result_hash: Mapped[str | None] = mapped_column(String(66))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    node_url: Mapped[str | None] = mapped_column(String(512))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # A request answered at once from a reservation (the OpenAI path): "open" (answered,
    # in no settlement yet), "batched" (in a settlement not yet certified), "settled";
    # None for a request certified before it ran. ``charged``: what it costs once run.
    settle_state: Mapped[str | None] = mapped_column(String(8))
    charged: Mapped[int | None] = mapped_column(BigInteger)


class Settlement(Base):
    """A delegate's settlement order (requests it answered from a reservation, certified
    together), journaled before anyone is asked to vote for it: after a crash the same
    order is asked again, never a second one for its sequence."""

    __tablename__ = "settlements"

    order_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(66), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(Integer)
    order: Mapped[bytes] = mapped_column(LargeBinary)  # the signed order, canonical JSON
    # "pending" (asked, not certified), "certified", "void" (it can never be: its
    # requests go in another)
    state: Mapped[str] = mapped_column(String(10), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    settled_at: Mapped[float | None] = mapped_column(Float)


class InferenceResult(Base):
    """A signed result summary an executor announced (tokens, latency, node, hash)."""

    __tablename__ = "inference_results"
    # one row per request of a summaries envelope (many requests to an envelope)
    __table_args__ = (
        UniqueConstraint("envelope_id", "request_id", name="uq_inference_results_envelope_request"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    envelope_id: Mapped[str] = mapped_column(String(66))
    request_id: Mapped[str] = mapped_column(String(66), index=True)
    executor: Mapped[str] = mapped_column(String(42), index=True)
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    result_hash: Mapped[str | None] = mapped_column(String(66))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    node_url: Mapped[str | None] = mapped_column(String(512))
    received_at: Mapped[float] = mapped_column(Float)
    # the executor's signed time: it places the request in an epoch (against block times)
    created_at: Mapped[float | None] = mapped_column(Float, index=True)


class ReputationEvent(Base):
    """A signed reputation event (seed commitment or reveal, audit verdict, user rating,
    liveness observation), decoded into columns; the envelope itself is in the log."""

    __tablename__ = "reputation_events"
    __table_args__ = (
        Index("ix_reputation_events_epoch_kind", "epoch", "kind"),
        Index("ix_reputation_events_sender_epoch", "sender", "epoch"),
    )

    envelope_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(BigInteger)
    sender: Mapped[str] = mapped_column(String(42))
    subject: Mapped[str | None] = mapped_column(String(42))  # executor, observed peer
    request_id: Mapped[str | None] = mapped_column(String(66), index=True)
    value: Mapped[str | None] = mapped_column(String(80))  # verdict, commitment, seed...
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the payload, canonical JSON
    created_at: Mapped[float] = mapped_column(Float)


class AuditSeed(Base):
    """This member's own audit seed per epoch: secret until its reveal."""

    __tablename__ = "audit_seeds"

    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seed: Mapped[str] = mapped_column(String(66))
    committed: Mapped[int] = mapped_column(Integer, default=0)
    revealed: Mapped[int] = mapped_column(Integer, default=0)


class AuditTask(Base):
    """An audit this member drew: queued until done, then its verdict."""

    __tablename__ = "audit_tasks"
    __table_args__ = (Index("ix_audit_tasks_state_due", "state", "due_at"),)

    request_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    executor: Mapped[str] = mapped_column(String(42))
    epoch: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # queued | done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class ReputationTable(Base):
    """The tally and score table of a closed epoch, as this member computed them."""

    __tablename__ = "reputation_tables"

    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tally: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    scores: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    hash: Mapped[str] = mapped_column(String(66))
    events: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[float] = mapped_column(Float)
