"""Credit-pack purchase routes (the Pastel layer's names) and their peer-to-peer side."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from supernode.api.deps import ENVELOPE_BODY, get_node
from supernode.api.guard import read_json
from supernode.api.limits import limited
from supernode.api.validation import checksum
from supernode.credits.purchase import pack_view
from supernode.credits.terms import TX_HASH_RE, check_tx_hash
from supernode.errors import BadRequest, NotFound
from supernode.ledger import credits as repo
from supernode.node import Supernode

router = APIRouter(tags=["credit packs"])
p2p = APIRouter(prefix="/p2p", tags=["peer-to-peer"])

HEX32 = r"^0x[0-9a-fA-F]{64}$"


class ConfirmPurchase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purchase_id: str = Field(pattern=HEX32)
    tx_hash: str = Field(pattern=HEX32, description="the payment transaction")
    quote: dict[str, Any] | None = Field(
        default=None, description="the signed quote, needed where the purchase is unknown"
    )


def _hex32(value: str, what: str) -> str:
    if not TX_HASH_RE.match(value):
        raise BadRequest(f"{what} must be 0x followed by 64 hex digits")
    return value.lower()


@router.post(
    "/credit_purchase_initial_request",
    dependencies=[Depends(limited("writes"))],
    openapi_extra=ENVELOPE_BODY,
)
async def credit_purchase_initial_request(
    request: Request, node: Supernode = Depends(get_node)
) -> dict[str, Any]:
    """Body: the buyer's signed `credit_purchase_request` envelope ({credits}). Returns the
    quote: terms (purchase_id, payment_address, amount_wei, expiry_block...) and a quorum
    of members' agreement signatures. Pay it with one transaction: to = payment_address,
    value = amount_wei, input = purchase_id."""
    return await node.credits.quote(await read_json(request))


@router.post("/confirm_credit_purchase_request", dependencies=[Depends(limited("writes"))])
async def confirm_credit_purchase_request(
    body: ConfirmPurchase, node: Supernode = Depends(get_node)
) -> JSONResponse:
    """The payment's transaction hash. 200 with the pack once a quorum certified it;
    202 while it waits for confirmations; 422 with the reason if the payment is refused."""
    result = await node.credits.confirm(body.purchase_id.lower(), body.tx_hash, body.quote)
    return JSONResponse(result, status_code=200 if result["status"] == repo.CERTIFIED else 202)


@router.get("/check_status_of_credit_purchase_request/{purchase_id}")
async def purchase_status(purchase_id: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """quoted → pending → certified, or refused with the reason."""
    return node.credits.status(_hex32(purchase_id, "purchase_id"))


@router.get("/get_credit_pack_ticket_from_txid/{tx_hash}")
async def pack_from_tx(tx_hash: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """The certified pack that transaction paid for."""
    tx = check_tx_hash(tx_hash)
    with node.db.read() as conn:
        pack = repo.pack_by_tx(conn, tx)
    if pack is None:
        raise NotFound(f"no certified pack paid by {tx}")
    return pack_view(pack)


@router.get("/get_valid_credit_pack_tickets_for_address/{address}")
async def packs_for_address(address: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Certified packs bought by the address that still hold credits."""
    buyer = checksum(address)
    with node.db.read() as conn:
        packs = repo.packs_for(conn, buyer)
    valid = [pack_view(p) for p in packs if p["remaining_credits"] > 0]
    return {"address": buyer, "count": len(valid), "packs": valid}


@router.get("/check_credit_pack_balance/{pack_id}")
async def pack_balance(pack_id: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Credits bought and remaining in a certified pack. For an API key's reservation,
    at its supernode: ``unsettled_credits``, what it answered from it and has not had
    certified yet (it comes off ``remaining_credits`` at the next settlement)."""
    with node.db.read() as conn:
        pack = repo.get_pack(conn, _hex32(pack_id, "pack_id"))
    if pack is None:
        raise NotFound(f"no certified pack {pack_id} known here")
    out = {
        "pack_id": pack["pack_id"],
        "buyer": pack["buyer"],
        "credits": pack["credits"],
        "remaining_credits": pack["remaining_credits"],
        "next_sequence": pack["next_sequence"],
    }
    if pack["buyer"] == node.address:
        out["unsettled_credits"] = node.openai.settler.outstanding.get(pack["pack_id"], 0)
    return out


@p2p.post("/agree_quote", openapi_extra=ENVELOPE_BODY)
async def agree_quote(request: Request, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """A member asks us to agree to its price quote (we recompute it)."""
    return await node.witness.rpc_agree_quote(await read_json(request))


@p2p.post("/certify_purchase", openapi_extra=ENVELOPE_BODY)
async def certify_purchase(request: Request, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """A member asks us to certify a paid purchase (we check the chain ourselves)."""
    return await node.witness.rpc_certify_purchase(await read_json(request))
