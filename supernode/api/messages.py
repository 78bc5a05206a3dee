"""Supernode messaging, user messaging and challenges (the Pastel layer's paths)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from supernode.api.deps import Caller, get_node, operator_auth, prove, user_auth
from supernode.api.limits import limited
from supernode.api.validation import checksum
from supernode.errors import BadRequest, Forbidden
from supernode.federation.messaging import (
    SEND_USER_MESSAGE_ENDPOINT,
    SN_MESSAGE,
    USER_MESSAGE,
    MessageType,
)
from supernode.ledger import messages as msg_repo
from supernode.node import Supernode

router = APIRouter(tags=["messages"])

MAX_WAIT_S = 30.0
ENDPOINTS = {
    "/send_user_message",
    "/get_user_messages",
    "/show_logs",
    "/retrieve_inference_output_results",
    "/stream_inference_output",
    "/execute_inference_request",
    "/logs/stream",
    "/send_message",
    "/broadcast_message",
    "/broadcast_message_to_all_sns",
    "/get_delegation_usage",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SendMessage(_Body):
    to_address: str = Field(description="the receiving supernode's address")
    message_type: MessageType
    message_body: str
    wait_s: float = Field(
        default=0.0, ge=0, le=MAX_WAIT_S, description="wait up to this long for delivery reports"
    )


class BroadcastMessage(_Body):
    to_addresses: list[str] = Field(min_length=1, max_length=1000)
    message_type: MessageType
    message_body: str
    wait_s: float = Field(default=0.0, ge=0, le=MAX_WAIT_S)


class BroadcastToAll(_Body):
    message_type: MessageType
    message_body: str
    wait_s: float = Field(default=0.0, ge=0, le=MAX_WAIT_S)


class SendUserMessage(_Body):
    to_address: str
    message_body: str


def _check_body(node: Supernode, body: str) -> None:
    if len(body) > node.settings.max_message_chars:
        raise BadRequest(f"message_body longer than {node.settings.max_message_chars} characters")


def _member(node: Supernode, address: str) -> str:
    addr = checksum(address, "to_address")
    if node.network.member(addr) is None:
        raise BadRequest(f"{addr} is not a member of this network")
    if addr == node.address:
        raise BadRequest("that is this supernode")
    return addr


def _delivery(node: Supernode, env_id: str, targets: list[str], deliveries: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    out: dict[str, Any] = {"envelope_id": env_id, "sender": node.address}
    if deliveries:
        out["delivered"] = {
            t: (d["ok"] if d.get("ok") else d.get("error", "failed"))
            for t, d in zip(targets, deliveries, strict=True)
        }
    return out


@router.post("/send_message")
async def send_message(
    req: SendMessage,
    node: Supernode = Depends(get_node),
    _op: Caller = Depends(operator_auth("/send_message")),
) -> dict[str, Any]:
    """Send a signed message from this supernode to one supernode (operator only)."""
    to = _member(node, req.to_address)
    _check_body(node, req.message_body)
    env = node.sign(
        SN_MESSAGE,
        {"message_type": req.message_type, "message_body": req.message_body},
        recipient=to,
    )
    _, deliveries = await node.publish(env, wait_s=req.wait_s)
    return _delivery(node, env.id, [to], deliveries)


@router.post("/broadcast_message")
async def broadcast_message(
    req: BroadcastMessage,
    node: Supernode = Depends(get_node),
    _op: Caller = Depends(operator_auth("/broadcast_message")),
) -> dict[str, Any]:
    """Send the message to each listed supernode (one envelope per recipient)."""
    targets = list(dict.fromkeys(_member(node, a) for a in req.to_addresses))
    _check_body(node, req.message_body)
    results = []
    for to in targets:
        env = node.sign(
            SN_MESSAGE,
            {"message_type": req.message_type, "message_body": req.message_body},
            recipient=to,
        )
        _, deliveries = await node.publish(env, wait_s=req.wait_s)
        results.append({**_delivery(node, env.id, [to], deliveries), "to_address": to})
    return {"messages": results}


@router.post("/broadcast_message_to_all_sns")
async def broadcast_to_all(
    req: BroadcastToAll,
    node: Supernode = Depends(get_node),
    _op: Caller = Depends(operator_auth("/broadcast_message_to_all_sns")),
) -> dict[str, Any]:
    """Sign one message for every supernode and push it to all of them."""
    _check_body(node, req.message_body)
    env = node.sign(
        SN_MESSAGE, {"message_type": req.message_type, "message_body": req.message_body}
    )
    _, deliveries = await node.publish(env, wait_s=req.wait_s)
    return _delivery(node, env.id, list(node.gossip.links), deliveries)


@router.get("/get_messages")
async def get_messages(
    last_k_minutes: int = Query(default=60, ge=1, le=525_600),
    message_type: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=1000, ge=1, le=100_000),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """Supernode messages of the last k minutes, newest first."""
    since = int(time.time()) - last_k_minutes * 60
    with node.db.read() as conn:
        rows = msg_repo.recent_messages(conn, since, message_type, limit)
    return {"count": len(rows), "messages": rows}


@router.get("/get_message_metadata")
async def get_message_metadata(node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Message counts and bytes by type, sender, receiver and pair."""
    with node.db.read() as conn:
        return msg_repo.metadata(conn)


@router.get("/request_challenge/{address}", dependencies=[Depends(limited("challenges"))])
async def request_challenge(
    address: str,
    endpoint: str = Query(description="the path the answer will be used on"),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """A single-use challenge for ``address``, bound to ``endpoint``; sign ``text`` with
    EIP-191 (personal_sign) and send X-Auth-Address, X-Auth-Challenge-Id and
    X-Auth-Signature."""
    addr = checksum(address)
    if endpoint not in ENDPOINTS:
        raise BadRequest(f"endpoint must be one of {sorted(ENDPOINTS)}")
    ch = node.challenges.issue(addr, endpoint)
    return {
        "challenge_id": ch.challenge_id,
        "address": ch.address,
        "endpoint": ch.endpoint,
        "expires_at": ch.expires_at,
        "text": ch.text,
    }


@router.post(
    "/send_user_message",
    dependencies=[Depends(limited("writes")), Depends(limited("challenges"))],
)
async def send_user_message(
    req: SendUserMessage,
    node: Supernode = Depends(get_node),
    x_auth_address: str | None = Header(default=None),
    x_auth_challenge_id: str | None = Header(default=None),
    x_auth_signature: str | None = Header(default=None),
) -> dict[str, Any]:
    """Send a message from the authenticated user to another address, through the
    federation. Peers re-check the user's signature, so any of them can serve it."""
    to = checksum(req.to_address, "to_address")
    _check_body(node, req.message_body)
    sender = checksum(x_auth_address, "X-Auth-Address") if x_auth_address else None
    ch = await prove(
        node, SEND_USER_MESSAGE_ENDPOINT, sender, x_auth_challenge_id, x_auth_signature
    )
    env = node.sign(
        USER_MESSAGE,
        {
            "from_address": ch.address,
            "to_address": to,
            "message_body": req.message_body,
            "challenge_id": ch.challenge_id,
            "challenge_expires_at": ch.expires_at,
            "challenge_signature": x_auth_signature,
        },
    )
    await node.publish(env)
    return {
        "envelope_id": env.id,
        "from_address": ch.address,
        "to_address": to,
        "relayed_by": node.address,
    }


@router.get("/get_user_messages/{address}")
async def get_user_messages(
    address: str,
    limit: int = Query(default=1000, ge=1, le=10_000),
    node: Supernode = Depends(get_node),
    caller: Caller = Depends(user_auth("/get_user_messages")),
) -> dict[str, Any]:
    """Every user message sent or received by ``address`` (that user or the operator)."""
    addr = checksum(address)
    if caller.address != addr and not caller.operator:
        raise Forbidden("you may read only your own messages")
    with node.db.read() as conn:
        rows = msg_repo.user_messages_for(conn, addr, limit)
    return {"count": len(rows), "messages": rows}
