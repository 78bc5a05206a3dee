"""Peer-to-peer routes: envelope intake (push) and anti-entropy (pull)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from supernode.api.deps import ENVELOPE, ENVELOPE_BODY, body_doc, get_node, json_body, ready_node
from supernode.api.guard import read_json
from supernode.node import Supernode

router = APIRouter(prefix="/p2p", tags=["peer-to-peer"])


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
    node = ready_node(request)  # a fast route: the request alone, a Response
    return json_body(await node.gossip.rpc_envelopes(await read_json(request)))


@router.post("/sync", openapi_extra=ENVELOPE_BODY)
async def sync(request: Request, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Anti-entropy, step 1: the ids after the caller's cursor in our log, oldest first:
    `{"ids": [...], "next_cursor": n, "more": bool}` (the caller fetches what it lacks)."""
    return node.gossip.rpc_sync(await read_json(request))


@router.post("/fetch", openapi_extra=ENVELOPE_BODY)
async def fetch(request: Request, node: Supernode = Depends(get_node)) -> Response:
    """Anti-entropy, step 2: the envelopes with these ids that the caller may see,
    `{"envelopes": [...]}` (unknown ids are left out)."""
    return Response(node.gossip.rpc_fetch(await read_json(request)), media_type="application/json")
