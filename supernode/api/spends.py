"""Spending credits: certify a signed spend order; read a pack's spends; the peer side."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from supernode.api.credits import HEX32
from supernode.api.deps import ENVELOPE_BODY, get_node, json_body, ready_node
from supernode.api.guard import read_json
from supernode.ledger import MAX_INTEGER
from supernode.node import Supernode

router = APIRouter(tags=["spends"])
p2p = APIRouter(prefix="/p2p", tags=["peer-to-peer"])


@router.post("/spend_credits", openapi_extra=ENVELOPE_BODY)
async def spend_credits(request: Request) -> Response:
    """Body: the owner's signed `spend_order` envelope {pack_id, sequence, amount,
    request_id, executor = this supernode}. Returns the spend certificate (the order and a
    quorum of votes) once certified; the inference path certifies its spends the same way."""
    node = ready_node(request)  # a hot route: no dependencies, no response model
    order = node.voter.parse(await read_json(request))
    return json_body(await node.executor.certify(order))


@router.get("/get_credit_pack_spends/{pack_id}")
async def pack_spends(
    pack_id: str = Path(pattern=HEX32),
    from_sequence: int = Query(default=0, ge=0, le=MAX_INTEGER),
    limit: int = Query(default=100, ge=1, le=1000),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """The pack's spend certificates from ``from_sequence`` on, in sequence order."""
    certs = node.voter.certificates(pack_id.lower(), from_sequence, limit)
    return {"pack_id": pack_id.lower(), "count": len(certs), "certificates": certs}


@p2p.post("/spend_votes", openapi_extra=ENVELOPE_BODY)
async def spend_votes(request: Request) -> Response:
    """An executor asks for our votes: a signed `spend_vote_batch` whose payload is
    {"items": [{"order", "prior"}, ...]}; one result per item, each vote durable before
    this answers."""
    node = ready_node(request)  # a fast route: the request alone, a Response
    return json_body(await node.voter.rpc_spend_votes(await read_json(request)))


@p2p.get("/spend_certificates")
async def spend_certificates(
    pack_id: str = Query(pattern=HEX32),
    from_sequence: int = Query(default=0, ge=0, le=MAX_INTEGER),
    limit: int = Query(default=100, ge=1, le=1000),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """Certificates a behind peer fetches to catch up (verifiable by anyone)."""
    return {
        "certificates": node.voter.rpc_spend_certificates(pack_id.lower(), from_sequence, limit)
    }
