"""Request dependencies: the node, and who is calling (operator, user)."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Header, Request, Response

from supernode.crypto.envelope import Envelope
from supernode.errors import Forbidden, Unauthorized, Unavailable
from supernode.federation.challenges import Challenge, ChallengeError
from supernode.node import Supernode

AUTH_HEADERS = "X-Auth-Address, X-Auth-Challenge-Id and X-Auth-Signature"


def body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (read_json): the
    body's schema in the OpenAPI document, so clients and fuzzers see what it takes."""
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


ENVELOPE = Envelope.model_json_schema()
ENVELOPE_BODY = body_doc(ENVELOPE)  # a signed envelope


def ready_node(request: Request) -> Supernode:
    node: Supernode = request.app.state.node
    if not node.ready:
        raise Unavailable("the daemon is starting or stopping")
    return node


def json_body(data: Any, status_code: int = 200) -> Response:
    """A JSON response written by orjson, for the hot routes (peer traffic, spends): it
    skips FastAPI's response encoding. Integers past 64 bits go through the stdlib."""
    try:
        content = orjson.dumps(data)
    except TypeError:
        content = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status_code, media_type="application/json")


async def get_node(request: Request) -> Supernode:
    """The node, as a dependency. Async on purpose: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop on every request."""
    return ready_node(request)


@dataclass(frozen=True)
class Caller:
    address: str
    operator: bool


async def prove(
    node: Supernode,
    endpoint: str,
    address: str | None,
    challenge_id: str | None,
    signature: str | None,
) -> Challenge:
    """Check a challenge answer sent in the X-Auth-* headers; returns the challenge."""
    if not (address and challenge_id and signature):
        raise Unauthorized(
            f"sign a challenge from /request_challenge/{{address}}?endpoint={endpoint} "
            f"and send {AUTH_HEADERS}"
        )
    try:
        return await node.challenges.answer(address, endpoint, challenge_id, signature)
    except ChallengeError as exc:
        raise Unauthorized(f"challenge refused: {exc.detail}") from exc


def user_auth(endpoint: str):  # type: ignore[no-untyped-def]
    """A caller that proved an address with a challenge bound to ``endpoint``
    (or the operator, with the operator token)."""

    async def dep(
        request: Request,
        x_auth_address: str | None = Header(default=None),
        x_auth_challenge_id: str | None = Header(default=None),
        x_auth_signature: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> Caller:
        node = ready_node(request)
        if _token_ok(node, authorization):
            return Caller(node.address, operator=True)
        ch = await prove(node, endpoint, x_auth_address, x_auth_challenge_id, x_auth_signature)
        return Caller(ch.address, operator=ch.address == node.address)

    return dep


def _token_ok(node: Supernode, authorization: str | None) -> bool:
    token = node.settings.operator_token
    if not token or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].encode(), token.encode())


def operator_auth(endpoint: str):  # type: ignore[no-untyped-def]
    """The operator: the operator token, or a challenge signed with the node's own key."""

    async def dep(
        request: Request,
        x_auth_address: str | None = Header(default=None),
        x_auth_challenge_id: str | None = Header(default=None),
        x_auth_signature: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> Caller:
        node = ready_node(request)
        if _token_ok(node, authorization):
            return Caller(node.address, operator=True)
        if authorization and not x_auth_address:
            raise Unauthorized("operator token refused")
        ch = await prove(node, endpoint, x_auth_address, x_auth_challenge_id, x_auth_signature)
        if ch.address != node.address:
            raise Forbidden("operator only: the challenge must be signed with this node's key")
        return Caller(ch.address, operator=True)

    return dep
