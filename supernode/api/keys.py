"""API keys (spend delegations): revoking one, and its usage report."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from supernode.api.credits import HEX32
from supernode.api.deps import ENVELOPE_BODY, Caller, get_node, user_auth
from supernode.api.guard import read_json
from supernode.api.limits import limited
from supernode.credits.revocations import REVOKED, open_revocation
from supernode.errors import Forbidden
from supernode.ledger import spends as repo
from supernode.node import Supernode

router = APIRouter(tags=["api keys"])
USAGE_ENDPOINT = "/get_delegation_usage"
DAY_S = 86_400


@router.post(
    "/revoke_delegation",
    openapi_extra=ENVELOPE_BODY,
    dependencies=[Depends(limited("writes"))],
)
async def revoke_delegation(
    request: Request, node: Supernode = Depends(get_node)
) -> dict[str, Any]:
    """Body: the pack owner's signed `delegation_revocation` {pack_id, delegation_id}
    (the key's id: ``supernode client keys list`` shows it). Stored and gossiped to every
    member; from then on no member votes for an order under that key, and its supernode
    refuses it. Revoking twice is harmless."""
    raw = await read_json(request)
    with node.db.read() as conn:
        inner, p = open_revocation(
            raw,
            node.network,
            conn,
            clock_skew_s=node.settings.clock_skew_s,
            max_ttl_s=node.settings.max_envelope_ttl_s,
        )
        already = repo.revoked_at(conn, p.delegation_id)
    if already is None:
        await node.publish(node.sign(REVOKED, {"revocation": inner.to_wire()}))
    return {
        "key_id": p.delegation_id,
        "pack_id": p.pack_id,
        "revoked": True,
        "revoked_at": already if already is not None else inner.created_at,
    }


@router.get(f"{USAGE_ENDPOINT}/{{key_id}}")
async def delegation_usage(
    key_id: str = Path(pattern=HEX32),
    days: int = Query(default=30, ge=1, le=366),
    node: Supernode = Depends(get_node),
    caller: Caller = Depends(user_auth(USAGE_ENDPOINT)),
) -> dict[str, Any]:
    """What an API key spent here (its supernode executes all of it), per UTC day and
    model, over the last ``days``: requests, tokens, and credits charged (what each
    request finally cost), settled with the federation and not yet.
    For the key's owner (a challenge signed by the pack's buyer) or the operator."""
    key_id = key_id.lower()
    since = time.time() - days * DAY_S
    with node.db.read() as conn:
        reserved = repo.reservation_of(conn, key_id)
        pack_id = reserved["parent_pack_id"] if reserved else None
        pack = repo.pack_state(conn, pack_id) if pack_id else None
        if pack is not None and not caller.operator and caller.address != pack["buyer"]:
            raise Forbidden("only the key's owner or the operator may read its usage")
        rows = repo.delegation_usage(conn, reserved["pack_id"], since) if reserved else []
        revoked = repo.revoked_at(conn, key_id)
    for r in rows:
        r["credits_unsettled"] = r["credits"] - r["credits_settled"]
    keys = ("requests", "prompt_tokens", "completion_tokens", "credits", "credits_settled")
    totals = {k: sum(r[k] for r in rows) for k in (*keys, "credits_unsettled")}
    return {
        "key_id": key_id,
        "pack_id": pack_id,
        "reservation": None
        if reserved is None
        else {
            "pack_id": reserved["pack_id"],
            "credits": reserved["credits"],
            "remaining_credits": reserved["remaining_credits"],
            "expires_at": reserved["expires_at"],
        },
        "since": since,
        "revoked_at": revoked,
        "totals": totals,
        "by_day_and_model": rows,
    }
