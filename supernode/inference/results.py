"""Reading a request's status and output."""

from __future__ import annotations

from typing import Any

from supernode.errors import Conflict, Forbidden, NotFound
from supernode.ledger import inference as repo
from supernode.ledger.db import Ledger


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
