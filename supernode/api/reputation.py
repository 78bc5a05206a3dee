"""Reputation routes: events in, score tables and events out, and the executor's side of
an audit (serving a result to an auditor)."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from supernode.api.deps import ENVELOPE_BODY, get_node
from supernode.api.guard import read_json
from supernode.api.limits import limited
from supernode.errors import BadRequest, NotFound
from supernode.ledger import reputation as repo
from supernode.node import Supernode
from supernode.reputation.submit import submit_event

router = APIRouter(tags=["reputation"])
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
EVENTS_LIMIT = 500


@router.post(
    "/update_inference_sn_reputation_score",
    dependencies=[Depends(limited("writes"))],
    openapi_extra=ENVELOPE_BODY,
)
async def update_reputation(
    request: Request, node: Supernode = Depends(get_node)
) -> dict[str, Any]:
    """Body: a signed event. Either a user's `request_rating` {request_id, rating 1..5,
    comment?} of a request it paid for (one per request), or a member's `audit_verdict`.
    Refused with the reason otherwise: unknown request (404), not the payer (403), rated
    already (409), a verdict that fails a check (422)."""
    s = node.settings
    return await submit_event(
        await read_json(request),
        network=node.network,
        signer=node.signer,
        intake=node.intake,
        publish=node.publish_all,
        db=node.db,
        clock=node.clock,
        clock_skew_s=s.clock_skew_s,
        max_ttl_s=s.max_envelope_ttl_s,
    )


@router.get("/get_inference_sn_reputation_scores")
async def reputation_scores(
    epoch: int | None = Query(default=None, ge=0, le=2**62),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """The score table of the last closed epoch (or of ``epoch``) as this supernode
    computed it, with its hash: every honest peer shows the same hash for the same epoch.
    Per member: score 0-100, invalid, requests, audits passed / failed (and the pass rate in
    basis points), results not served to auditors, audits assigned / done / missed."""
    if epoch is None:
        latest = node.book.latest()
        head = node.clock.epoch
        if latest is None:
            return {"epoch": None, "hash": None, "rows": [], "chain_epoch": head}
        return {**latest, "chain_epoch": head}
    with node.db.read() as conn:
        row = repo.get_table(conn, epoch)
    if row is None:
        raise NotFound(f"no table for epoch {epoch} here (not closed, or before this ledger)")
    return {
        "epoch": epoch,
        "hash": row["hash"],
        "events": row["events"],
        **json.loads(row["scores"]),
    }


@router.get("/get_reputation_events")
async def reputation_events(
    address: str = Query(..., max_length=42),
    epoch: int | None = Query(default=None, ge=0, le=2**62),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """Signed reputation events a member sent (seed commitments and reveals, verdicts,
    ratings it carried, liveness), with ``epoch``: and the verdicts and ratings about it."""
    if not ADDRESS.match(address):
        raise BadRequest("address: 0x and 40 hex digits")

    def view(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": r["envelope_id"],
            "kind": r["kind"],
            "epoch": r["epoch"],
            "sender": r["sender"],
            "subject": r["subject"],
            "request_id": r["request_id"],
            "value": r["value"],
            "created_at": r["created_at"],
            "payload": json.loads(r["data"]),
        }

    with node.db.read() as conn:
        sent = repo.events_by(conn, address, epoch, EVENTS_LIMIT)
        about = repo.events_about(conn, address, epoch, EVENTS_LIMIT) if epoch is not None else []
    return {
        "address": address,
        "epoch": epoch,
        "sent": [view(r) for r in sent],
        "about": [view(r) for r in about],
    }


@router.post("/audit_result", openapi_extra=ENVELOPE_BODY, tags=["peer-to-peer"])
async def audit_result(request: Request, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """An auditor (another member) asks for a result this supernode executed, with a
    signed `audit_fetch` {request_id} addressed here; the answer is the result signed to
    it (`audit_result`), the evidence its verdict rests on."""
    return node.auditor.rpc_audit_result(await read_json(request))
