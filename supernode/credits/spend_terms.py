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
from typing import Any

from pydantic import ValidationError

from supernode.crypto.attest import CertificateError, verify_certificate
from supernode.crypto.envelope import Envelope, EnvelopeError, check_envelope, is_checksummed
from supernode.errors import BadRequest, Refused
from supernode.federation.network import NetworkFile
from supernode.ledger import MAX_INTEGER

SPEND_ORDER = "spend_order"
DELEGATION = "spend_delegation"
VOTE_KIND = "spend_vote"
ORDER_FIELDS = {"pack_id", "sequence", "amount", "request_id", "executor"}
DELEGATION_FIELDS = {"pack_id", "delegate", "max_credits"}
HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
# a certified order stays valid after its own lifetime: its time window is not checked
NO_TIME_WINDOW = 10**12


def _int(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_INTEGER:
        raise BadRequest(f"{name} must be an integer from {low} to {MAX_INTEGER}")
    return value


def _hex32(value: Any, name: str) -> None:
    if not isinstance(value, str) or not HEX32.match(value):
        raise BadRequest(f"{name} must be 0x followed by 64 lower-case hex digits")


def _envelope(raw: Any, what: str) -> Envelope:
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"{what} malformed: {where}: {first['msg']}") from exc


def _signed(
    env: Envelope,
    network: NetworkFile,
    clock_skew_s: int,
    max_ttl_s: int,
    expired_reason: str | None = None,
) -> None:
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
        reason = expired_reason if expired_reason and exc.reason == "expired" else exc.reason
        raise Refused(str(exc), reason=reason) from exc


def parse_delegation(
    raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int
) -> Envelope:
    d = _envelope(raw, "delegation")
    if d.type != DELEGATION or set(d.payload) != DELEGATION_FIELDS:
        raise BadRequest(f"a delegation is a {DELEGATION} envelope {sorted(DELEGATION_FIELDS)}")
    _hex32(d.payload["pack_id"], "delegation pack_id")
    if not isinstance(d.payload["delegate"], str) or not is_checksummed(d.payload["delegate"]):
        raise BadRequest("delegation delegate must be a checksummed address")
    _int(d.payload["max_credits"], "max_credits", 1)
    _signed(d, network, clock_skew_s, max_ttl_s, expired_reason="delegation_expired")
    return d


def parse_order(raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int) -> Envelope:
    """Schema, binding, time window and signatures (the order's and its delegation's).
    The pack rules (owner, sequence, balance, cap) need the ledger: check_against_pack.
    Pass NO_TIME_WINDOW for both windows to check a certified (possibly old) order."""
    env = _envelope(raw, "spend order")
    if env.type != SPEND_ORDER:
        raise BadRequest(f"expected a {SPEND_ORDER} envelope")
    p = env.payload
    if set(p) - {"delegation"} != ORDER_FIELDS:
        raise BadRequest(f"spend order payload: exactly {sorted(ORDER_FIELDS)} (+ delegation)")
    _hex32(p["pack_id"], "pack_id")
    _hex32(p["request_id"], "request_id")
    _int(p["sequence"], "sequence", 0)
    _int(p["amount"], "amount", 1)
    if not isinstance(p["executor"], str) or not is_checksummed(p["executor"]):
        raise BadRequest("executor must be a checksummed address")
    if network.member(p["executor"]) is None:
        raise Refused(f"executor {p['executor']} is not a member", reason="unknown_executor")
    _signed(env, network, clock_skew_s, max_ttl_s)
    if "delegation" in p:
        d = parse_delegation(
            p["delegation"], network, clock_skew_s=clock_skew_s, max_ttl_s=max_ttl_s
        )
        if d.payload["pack_id"] != p["pack_id"]:
            raise Refused("the delegation is for another pack", reason="bad_delegation")
        if d.payload["delegate"] != env.sender or env.sender != p["executor"]:
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
