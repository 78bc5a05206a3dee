"""Spend orders, delegations and spend certificates (pure checks, no I/O).

A spend order is an envelope `spend_order` {pack_id, sequence, amount, request_id,
executor}, signed by the pack's owner — or by the executor itself under the owner's
`spend_delegation` {pack_id, delegate, max_credits} (valid until the delegation
envelope's expires_at), carried in the order as `delegation`: this is how an OpenAI API
key spends. A vote is a member's attestation (kind `spend_vote`) of the order's terms; a
quorum of votes is the spend certificate {"order": <order envelope>, "votes": [...]}.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field

from supernode.crypto.attest import CertificateError, verify_certificate
from supernode.crypto.envelope import (
    ChecksumAddress,
    Envelope,
    EnvelopeError,
    Hex32,
    Payload,
    open_envelope,
)
from supernode.errors import BadRequest, Refused
from supernode.federation.network import NetworkFile
from supernode.ledger import MAX_INTEGER

SPEND_ORDER = "spend_order"
DELEGATION = "spend_delegation"
VOTE_KIND = "spend_vote"
HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
# a certified order stays valid after its own lifetime: its time window is not checked
NO_TIME_WINDOW = 10**12
P = TypeVar("P", bound=BaseModel)


Credits = Annotated[int, Field(ge=1, le=MAX_INTEGER)]


class DelegationPayload(Payload):
    """`spend_delegation`: supernode ``delegate`` may spend up to ``max_credits`` of the
    pack until the envelope expires (an OpenAI API key)."""

    pack_id: Hex32
    delegate: ChecksumAddress
    max_credits: Credits


class OrderPayload(Payload):
    """`spend_order`: spend ``amount`` credits of the pack at ``sequence`` for
    ``request_id``, run by ``executor``; signed by the owner, or by the executor under the
    owner's ``delegation`` (the whole signed delegation envelope)."""

    pack_id: Hex32
    sequence: Annotated[int, Field(ge=0, le=MAX_INTEGER)]
    amount: Credits
    request_id: Hex32
    executor: ChecksumAddress
    delegation: dict[str, Any] | None = None


def _open(
    raw: Any,
    type_: str,
    payload: type[P],
    network: NetworkFile,
    clock_skew_s: int,
    max_ttl_s: int,
    expired_reason: str | None = None,
) -> tuple[Envelope, P]:
    try:
        return open_envelope(
            raw,
            type_,
            payload,
            network_id=network.network_id,
            chain_id=network.chain_id,
            me=None,
            clock_skew_s=clock_skew_s,
            max_ttl_s=max_ttl_s,
        )
    except EnvelopeError as exc:
        if expired_reason and exc.reason == "expired":  # a delegation: the API key expired
            raise EnvelopeError(expired_reason, exc.detail, penalise=exc.penalise) from exc
        raise


def parse_delegation(
    raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int
) -> Envelope:
    d, _ = _open(
        raw,
        DELEGATION,
        DelegationPayload,
        network,
        clock_skew_s,
        max_ttl_s,
        expired_reason="delegation_expired",
    )
    return d


def parse_order(raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int) -> Envelope:
    """Schema, binding, time window and signatures (the order's and its delegation's).
    The pack rules (owner, sequence, balance, cap) need the ledger: check_against_pack.
    Pass NO_TIME_WINDOW for both windows to check a certified (possibly old) order."""
    env, p = _open(raw, SPEND_ORDER, OrderPayload, network, clock_skew_s, max_ttl_s)
    if network.member(p.executor) is None:
        raise Refused(f"executor {p.executor} is not a member", reason="unknown_executor")
    if "delegation" in env.payload:
        d = parse_delegation(p.delegation, network, clock_skew_s=clock_skew_s, max_ttl_s=max_ttl_s)
        if d.payload["pack_id"] != p.pack_id:
            raise Refused("the delegation is for another pack", reason="bad_delegation")
        if d.payload["delegate"] != env.sender or env.sender != p.executor:
            raise Refused(
                "a delegated order is signed by its delegate, the executor", reason="bad_delegation"
            )
    return env


def order_window(order: Envelope, now: float, *, clock_skew_s: int, max_ttl_s: int) -> str | None:
    """Why ``order`` may not get a *first* vote now ("from_future", "bad_expiry",
    "order_expired", "delegation_expired"), or None. Its signatures are checked by
    parse_order; a voter that voted for it already answers with that vote whatever the
    time (see SpendService)."""
    windows = [(order.created_at, order.expires_at, "order_expired")]
    d = order.payload.get("delegation")
    if d is not None:
        windows.append((d["created_at"], d["expires_at"], "delegation_expired"))
    for created, expires, expired in windows:
        if expires - created > max_ttl_s:
            return "bad_expiry"
        if created > now + clock_skew_s:
            return "from_future"
        if expires < now - clock_skew_s:
            return expired
    return None


def delegation_id(order: Envelope) -> str | None:
    d = order.payload.get("delegation")
    return d.get("id") if isinstance(d, dict) else None


def vote_terms(order: Envelope) -> dict[str, Any]:
    p = order.payload
    return {
        "order_id": order.id,
        "pack_id": p["pack_id"],
        "sequence": p["sequence"],
        "amount": p["amount"],
        "request_id": p["request_id"],
        "executor": p["executor"],
        "spender": order.sender,
        "delegation_id": delegation_id(order),
        "network_id": order.network_id,
        "chain_id": order.chain_id,
    }


def check_against_pack(
    order: Envelope, pack: dict[str, Any] | None, delegated_spent: int = 0
) -> None:
    """The owner signs (or its delegate, within the cap: ``delegated_spent`` is what was
    certified under that delegation so far); the sequence is the next; the amount fits."""
    p = order.payload
    if pack is None:
        raise Refused(f"no certified pack {p['pack_id']} known here", reason="unknown_pack")
    delegation = p.get("delegation")
    if delegation is None:
        if order.sender != pack["buyer"]:
            raise Refused("the order is not signed by the pack's owner", reason="not_owner")
    else:
        if delegation["sender"] != pack["buyer"]:
            raise Refused(
                "the delegation is not signed by the pack's owner", reason="bad_delegation"
            )
        cap = delegation["payload"]["max_credits"]
        if delegated_spent + p["amount"] > cap:
            raise Refused(
                f"the delegation allows {cap} credits: {delegated_spent} spent, "
                f"{p['amount']} more asked",
                reason="delegation_cap",
            )
    if p["sequence"] < pack["next_sequence"]:
        raise Refused(
            f"sequence {p['sequence']} is spent; next is {pack['next_sequence']}",
            reason="stale_sequence",
        )
    if p["sequence"] > pack["next_sequence"]:
        raise Refused(
            f"sequence {p['sequence']}; this peer expects {pack['next_sequence']}",
            reason="sequence_ahead",
        )
    if p["amount"] > pack["remaining_credits"]:
        raise Refused(
            f"amount {p['amount']} > remaining {pack['remaining_credits']}",
            reason="insufficient_credits",
        )


def verify_spend_certificate(
    cert: Any, network: NetworkFile, eligible: Collection[str], quorum: int | None
) -> tuple[Envelope, dict[str, Any]]:
    """The order is the owner's (or its delegate's) and a quorum voted for it."""
    if (
        not isinstance(cert, dict)
        or set(cert) != {"order", "votes"}
        or not isinstance(cert["votes"], list)
    ):
        raise BadRequest('a spend certificate is {"order": ..., "votes": [...]}')
    order = parse_order(
        cert["order"], network, clock_skew_s=NO_TIME_WINDOW, max_ttl_s=NO_TIME_WINDOW
    )
    terms = vote_terms(order)
    try:
        verify_certificate(
            VOTE_KIND,
            terms,
            cert["votes"],
            chain_id=network.chain_id,
            network_id=network.network_id,
            eligible=eligible,
            quorum=quorum,
        )
    except CertificateError as exc:
        raise Refused(f"spend certificate refused: {exc}", reason=exc.reason) from exc
    return order, terms
