"""Peer-to-peer routes: envelope intake (push) and anti-entropy (pull)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from supernode.api.deps import ENVELOPE, ENVELOPE_BODY, body_doc, get_node, json_body, ready_node
from supernode.api.guard import read_json
from supernode.crypto.envelope import Envelope
from supernode.errors import BadRequest
from supernode.federation.transport import (
    ENVELOPE_FETCH,
    GOSSIP_BATCH,
    SYNC_REQUEST,
    fetch_body,
    verify_transport,
)
from supernode.ledger import MAX_INTEGER
from supernode.ledger import envelopes as env_repo
from supernode.node import Node

router = APIRouter(prefix="/p2p", tags=["peer-to-peer"])


def transport(node: Node, raw: Any, type_: str) -> Envelope:
    return verify_transport(
        raw,
        type_,
        network=node.network,
        me=node.address,
        scoring=node.scoring,
        clock_skew_s=node.settings.clock_skew_s,
        max_ttl_s=node.settings.max_envelope_ttl_s,
    )


@router.post(
    "/envelopes",
    openapi_extra=body_doc(
        {
            "type": "object",
            "required": ["batch", "envelopes"],
            "properties": {"batch": ENVELOPE, "envelopes": {"type": "array", "items": ENVELOPE}},
        }
    ),
)
async def receive_envelopes(request: Request) -> Response:
    """A peer pushes envelopes: `{"batch": <gossip_batch>, "envelopes": [...]}`."""
    node = ready_node(request)  # a hot route: no dependencies, no response model
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"batch", "envelopes"}:
        raise BadRequest('expected {"batch": ..., "envelopes": [...]}')
    batch = transport(node, body["batch"], GOSSIP_BATCH)
    envs = body["envelopes"]
    ids = batch.payload.get("ids")
    if not isinstance(envs, list) or not isinstance(ids, list):
        raise BadRequest("envelopes and batch ids must be lists")
    if len(envs) > node.settings.push_batch_max * 4:
        raise BadRequest(f"more than {node.settings.push_batch_max * 4} envelopes in one batch")
    claimed = [e.get("id") if isinstance(e, dict) else None for e in envs]
    if claimed != ids:
        await node.scoring.penalise(
            batch.sender,
            [
                {
                    "reason": "batch_mismatch",
                    "detail": "envelope ids differ from the signed batch",
                }
            ],
        )
        raise BadRequest("envelope ids differ from the ids the batch signs")
    report = await node.intake.ingest(envs, via=batch.sender)
    return json_body(report.to_dict())


@router.post("/sync", openapi_extra=ENVELOPE_BODY)
async def sync(request: Request, node: Node = Depends(get_node)) -> dict[str, Any]:
    """Anti-entropy, step 1: the ids after the caller's cursor in our log, oldest first:
    `{"ids": [...], "next_cursor": n, "more": bool}` (the caller fetches what it lacks)."""
    req = transport(node, await read_json(request), SYNC_REQUEST)
    after, limit = req.payload.get("after"), req.payload.get("limit")
    if (
        not isinstance(after, int)
        or not isinstance(limit, int)
        or not 0 <= after <= MAX_INTEGER
        or not 1 <= limit <= MAX_INTEGER
    ):
        raise BadRequest(f"sync_request needs integers 0 <= after and 1 <= limit, to {MAX_INTEGER}")
    limit = min(limit, node.settings.anti_entropy_page)
    with node.db.read() as conn:
        # The end of the log first: every row up to it is committed (one writer, rising
        # seq), so a cursor moved to it skips nothing that commits meanwhile.
        end = env_repo.last_seq(conn)
        if after > end:
            after = 0  # our log is shorter than the caller's cursor: it was reset
        rows = env_repo.ids_after(conn, after, end, req.sender, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    # all visible rows up to `end` were listed: move past the invisible ones too
    cursor = rows[-1][0] if more else max(after, end)
    return {"ids": [r[1] for r in rows], "next_cursor": cursor, "more": more}


@router.post("/fetch", openapi_extra=ENVELOPE_BODY)
async def fetch(request: Request, node: Node = Depends(get_node)) -> Response:
    """Anti-entropy, step 2: the envelopes with these ids that the caller may see,
    `{"envelopes": [...]}` (unknown ids are left out)."""
    req = transport(node, await read_json(request), ENVELOPE_FETCH)
    ids = req.payload.get("ids")
    page = node.settings.anti_entropy_page
    if not isinstance(ids, list) or not 1 <= len(ids) <= page:
        raise BadRequest(f"envelope_fetch needs a list of 1 to {page} ids")
    if not all(isinstance(i, str) and len(i) == 66 for i in ids):
        raise BadRequest("ids are 0x-prefixed 32-byte hex strings")
    with node.db.read() as conn:
        raws = env_repo.raws_by_id(conn, ids, req.sender)
    return Response(fetch_body(raws), media_type="application/json")
