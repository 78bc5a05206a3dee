"""Spend orders and their certificates (pure checks, no I/O).

A spend order is an envelope `spend_order` signed by the pack's owner, for no particular
supernode: {pack_id, sequence, amount, request_id, executor}. A vote is a member's
attestation (kind `spend_vote`) of the order's terms; a quorum of votes is the spend
certificate {"order": <order envelope>, "votes": [...]}.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from eth_utils import is_checksum_address
from pydantic import ValidationError

from supernode.crypto.attest import CertificateError, verify_certificate
from supernode.crypto.envelope import Envelope, EnvelopeError, check_envelope
from supernode.errors import BadRequest, Refused
from supernode.federation.network import NetworkFile

SPEND_ORDER = "spend_order"
VOTE_KIND = "spend_vote"
ORDER_FIELDS = {"pack_id", "sequence", "amount", "request_id", "executor"}
HEX32 = re.compile(r"^0x[0-9a-f]{64}$")


def _int(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise BadRequest(f"{name} must be an integer >= {low}")
    return value


# a certified order stays valid after its own lifetime: its time window is not checked
NO_TIME_WINDOW = 10**12


def parse_order(raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int) -> Envelope:
    """Schema, binding, time window and the owner's signature. The pack rules (owner,
    sequence, balance) need the ledger and are checked by the caller. Pass
    NO_TIME_WINDOW for both windows to check a certified (possibly old) order."""
    try:
        env = Envelope.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"spend order malformed: {where}: {first['msg']}") from exc
    if env.type != SPEND_ORDER:
        raise BadRequest(f"expected a {SPEND_ORDER} envelope")
    p = env.payload
    if set(p) != ORDER_FIELDS:
        raise BadRequest(f"spend order payload must have exactly {sorted(ORDER_FIELDS)}")
    for name in ("pack_id", "request_id"):
        if not isinstance(p[name], str) or not HEX32.match(p[name]):
            raise BadRequest(f"{name} must be 0x followed by 64 lower-case hex digits")
    _int(p["sequence"], "sequence", 0)
    _int(p["amount"], "amount", 1)
    if not isinstance(p["executor"], str) or not is_checksum_address(p["executor"]):
        raise BadRequest("executor must be a checksummed address")
    if network.member(p["executor"]) is None:
        raise Refused(f"executor {p['executor']} is not a member", reason="unknown_executor")
    try:
        check_envelope(
            env,
            network_id=network.network_id,
            chain_id=network.chain_id,
            me=None,
            clock_skew_s=clock_skew_s,
            max_ttl_s=max_ttl_s,
        )
    except EnvelopeError as exc:
        raise Refused(str(exc), reason=exc.reason) from exc
    return env


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
        "network_id": order.network_id,
        "chain_id": order.chain_id,
    }


def check_against_pack(order: Envelope, pack: dict[str, Any] | None) -> None:
    """The owner signs; the sequence is the next; the amount fits."""
    p = order.payload
    if pack is None:
        raise Refused(f"no certified pack {p['pack_id']} known here", reason="unknown_pack")
    if order.sender != pack["buyer"]:
        raise Refused("the order is not signed by the pack's owner", reason="not_owner")
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
    """The order is the owner's (signature) and a quorum voted for it. Returns both."""
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
