"""A request's results: the summary and refund a finished run announces, and reading a
request's status and output.

Summaries are signed many to an envelope (``inference_results``, at most SUMMARIES_MAX):
one signature for many requests, checked once by every member (summaries.SummaryBatcher).
A refund is signed on its own, at once."""

from __future__ import annotations

from typing import Any

from supernode.crypto.envelope import Envelope
from supernode.errors import Conflict, Forbidden, NotFound
from supernode.federation.signer import Signer
from supernode.ledger import inference as repo
from supernode.ledger.db import Ledger

RESULT_SUMMARIES = "inference_results"  # gossip type: what an executor says it ran
SUMMARIES_MAX = 32  # summaries to an envelope (a verdict carries one as evidence)
REFUND = "spend_refund"  # gossip type: credits an executor gives back


def status(db: Ledger, me: str, request_id: str) -> dict[str, Any]:
    """quoted → certified → running → completed / failed, as this daemon knows it (its
    own request, or a summary another executor announced)."""
    with db.read() as conn:
        req = repo.get_request(conn, request_id)
        summaries = repo.results_for(conn, request_id)
    if req is None and not summaries:
        raise NotFound(f"no request {request_id} known here")
    out: dict[str, Any] = {"request_id": request_id}
    if req is not None:
        out.update(
            {
                k: req[k]
                for k in (
                    "status",
                    "model",
                    "pack_id",
                    "prompt_tokens",
                    "cost",
                    "sequence",
                    "result_hash",
                    "input_tokens",
                    "output_tokens",
                    "latency_ms",
                    "refunded",
                    "error",
                )
            }
        )
        out["executor"] = me
    elif summaries:
        s = summaries[-1]
        out.update(
            status=s["status"],
            model=s["model"],
            executor=s["executor"],
            result_hash=s["result_hash"],
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"],
            latency_ms=s["latency_ms"],
        )
    return out


def result(db: Ledger, request_id: str, caller: str, operator: bool) -> dict[str, Any]:
    with db.read() as conn:
        req = repo.get_request(conn, request_id)
    if req is None:
        raise NotFound(f"request {request_id} was not executed here")
    if caller != req["requester"] and not operator:
        raise Forbidden("only the requester may read the result")
    if req["status"] != repo.COMPLETED:
        raise Conflict(f"request is {req['status']}", reason=req["status"])
    return {
        "request_id": request_id,
        "model": req["model"],
        "output": req["result_text"],
        "result_hash": req["result_hash"],
        "input_tokens": req["input_tokens"],
        "output_tokens": req["output_tokens"],
        "cost": req["cost"] - req["refunded"],
    }


def summary(
    req: dict[str, Any], status: str, digest: str | None, out_tokens: int, latency_s: float
) -> dict[str, Any]:
    """A finished run's summary: one item of an ``inference_results`` envelope."""
    return {
        "request_id": req["request_id"],
        "model": req["model"],
        "status": status,
        "result_hash": digest,
        "input_tokens": req["prompt_tokens"],
        "output_tokens": out_tokens,
        "latency_ms": int(latency_s * 1000),
    }


def refund_envelope(
    signer: Signer, req: dict[str, Any], status: str, refund: int
) -> tuple[Envelope | None, int]:
    """The signed refund of a finished run when ``refund`` > 0 and the request was
    certified (else None), and the credits refunded."""
    refunded = refund if refund > 0 and req.get("sequence") is not None else 0
    if not refunded:
        return None, 0
    reason = "failed_run" if status == repo.FAILED else "unused_tokens"
    payload = {
        "pack_id": req["pack_id"],
        "sequence": req["sequence"],
        "request_id": req["request_id"],
        "amount": refunded,
        "reason": reason,
    }
    return signer.sign(REFUND, payload), refunded


def summary_in(env: Envelope, request_id: str) -> dict[str, Any] | None:
    """The summary of ``request_id`` in a summaries envelope, or None."""
    items = env.payload.get("results")
    if not isinstance(items, list):
        return None
    return next(
        (s for s in items if isinstance(s, dict) and s.get("request_id") == request_id), None
    )
