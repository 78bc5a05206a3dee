"""Gossip types of execution: signed result summaries and refunds."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from supernode.credits.orders import HEX32
from supernode.crypto.envelope import Envelope, EnvelopeError
from supernode.federation.handlers import Checked
from supernode.inference.results import REFUND, RESULT_SUMMARY
from supernode.ledger import MAX_INTEGER
from supernode.ledger import inference as repo

STATUSES = {repo.COMPLETED, repo.FAILED}


def _fields(p: dict[str, Any], names: set[str]) -> None:
    if set(p) != names:
        raise EnvelopeError("bad_payload", f"expected fields {sorted(names)}")


def _count(v: Any, name: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INTEGER:
        raise EnvelopeError("bad_payload", f"{name} must be an integer from 0 to {MAX_INTEGER}")


class ResultSummaryHandler:
    """`inference_result`: what the executor says it ran (tokens, latency, result hash)."""

    type = RESULT_SUMMARY
    record = repo.RESULT_SUMMARIES  # not money: the executor and every peer hold them
    FIELDS = {
        "request_id",
        "model",
        "status",
        "result_hash",
        "input_tokens",
        "output_tokens",
        "latency_ms",
    }

    def validate(self, env: Envelope) -> None:
        p = env.payload
        _fields(p, self.FIELDS)
        if not isinstance(p["request_id"], str) or not HEX32.match(p["request_id"]):
            raise EnvelopeError("bad_payload", "request_id must be 0x + 64 hex digits")
        if p["status"] not in STATUSES:
            raise EnvelopeError("bad_payload", f"status must be one of {sorted(STATUSES)}")
        if p["result_hash"] is not None and not (
            isinstance(p["result_hash"], str) and HEX32.match(p["result_hash"])
        ):
            raise EnvelopeError("bad_payload", "result_hash must be 0x + 64 hex digits or null")
        for name in ("input_tokens", "output_tokens", "latency_ms"):
            _count(p[name], name)
        if not isinstance(p["model"], str) or len(p["model"]) > 128:
            raise EnvelopeError("bad_payload", "model must be a name")

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        for c in items:
            p = c.env.payload
            repo.add_result(
                conn,
                {
                    "envelope_id": c.env.id,
                    "request_id": p["request_id"],
                    "executor": c.env.sender,
                    "model": p["model"],
                    "status": p["status"],
                    "result_hash": p["result_hash"],
                    "input_tokens": p["input_tokens"],
                    "output_tokens": p["output_tokens"],
                    "latency_ms": p["latency_ms"],
                    "node_url": None,
                    "received_at": received_at,
                },
            )


class RefundHandler:
    """`spend_refund`: credits an executor gives back. Stored once it is well formed and
    signed; applied only when its spend is applied, by that spend's executor, for its
    request, and within what that spend certified (so it may wait for the spend)."""

    type = REFUND
    record = repo.REFUNDS
    FIELDS = {"pack_id", "sequence", "request_id", "amount", "reason"}

    def validate(self, env: Envelope) -> None:
        p = env.payload
        _fields(p, self.FIELDS)
        for name in ("pack_id", "request_id"):
            if not isinstance(p[name], str) or not HEX32.match(p[name]):
                raise EnvelopeError("bad_payload", f"{name} must be 0x + 64 hex digits")
        _count(p["sequence"], "sequence")
        _count(p["amount"], "amount")
        if p["amount"] == 0:
            raise EnvelopeError("bad_payload", "amount must be positive")
        if not isinstance(p["reason"], str) or len(p["reason"]) > 64:
            raise EnvelopeError("bad_payload", "reason must be a short string")

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        packs = set()
        for c in items:
            p = c.env.payload
            repo.add_refund(
                conn,
                {
                    "envelope_id": c.env.id,
                    "pack_id": p["pack_id"],
                    "sequence": p["sequence"],
                    "request_id": p["request_id"],
                    "executor": c.env.sender,
                    "amount": p["amount"],
                    "reason": p["reason"],
                    "received_at": received_at,
                },
            )
            packs.add(p["pack_id"])
        for pack_id in packs:
            repo.apply_refunds(conn, pack_id)
