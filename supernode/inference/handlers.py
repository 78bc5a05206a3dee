"""Gossip types of execution: signed result summaries (many to an envelope) and refunds,
with their payloads typed (strict, frozen models: see crypto.envelope.Payload)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from supernode.crypto.envelope import Envelope, Hex32, Payload, payload_of
from supernode.errors import EnvelopeError
from supernode.federation.handlers import Checked
from supernode.inference.results import REFUND, RESULT_SUMMARIES, SUMMARIES_MAX
from supernode.ledger import MAX_INTEGER
from supernode.ledger import inference as repo

Count = Annotated[int, Field(ge=0, le=MAX_INTEGER)]


class ResultSummaryPayload(Payload):
    request_id: Hex32
    model: Annotated[str, StringConstraints(max_length=128)]
    status: Literal["completed", "failed"]  # the ledger's COMPLETED and FAILED
    result_hash: Hex32 | None
    input_tokens: Count
    output_tokens: Count
    latency_ms: Count


class ResultSummariesPayload(Payload):
    results: Annotated[list[ResultSummaryPayload], Field(min_length=1, max_length=SUMMARIES_MAX)]


class RefundPayload(Payload):
    pack_id: Hex32
    sequence: Count
    request_id: Hex32
    amount: Annotated[int, Field(ge=1, le=MAX_INTEGER)]
    reason: Annotated[str, StringConstraints(max_length=64)]


class ResultSummariesHandler:
    """`inference_results`: what the executor says it ran (tokens, latency, result hash),
    for many requests at once: a row per request."""

    type = RESULT_SUMMARIES
    record = repo.RESULT_SUMMARIES  # not money: the executor and every peer hold them

    def validate(self, env: Envelope) -> ResultSummariesPayload:
        p = payload_of(env, ResultSummariesPayload)
        ids = [s.request_id for s in p.results]
        if len(set(ids)) != len(ids):
            raise EnvelopeError("bad_payload", "a request is summarised twice in one envelope")
        return p

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        for c in items:
            p: ResultSummariesPayload = c.parsed
            for s in p.results:
                repo.add_result(
                    conn,
                    {
                        **s.model_dump(),
                        "envelope_id": c.env.id,
                        "executor": c.env.sender,
                        "node_url": None,
                        "received_at": received_at,
                        "created_at": c.env.created_at,
                    },
                )


class RefundHandler:
    """`spend_refund`: credits an executor gives back. Stored once it is well formed and
    signed; applied only when its spend is applied, by that spend's executor, for its
    request, and within what that spend certified (so it may wait for the spend)."""

    type = REFUND
    record = repo.REFUNDS

    def validate(self, env: Envelope) -> RefundPayload:
        return payload_of(env, RefundPayload)

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        packs = set()
        for c in items:
            p: RefundPayload = c.parsed
            repo.add_refund(
                conn,
                {
                    **p.model_dump(),
                    "envelope_id": c.env.id,
                    "executor": c.env.sender,
                    "received_at": received_at,
                },
            )
            packs.add(p.pack_id)
        for pack_id in packs:
            repo.apply_refunds(conn, pack_id)
