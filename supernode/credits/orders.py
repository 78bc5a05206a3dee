"""Spend orders, delegations and spend certificates: their wire types, parsed once at
the edge into an ``Order`` (pure checks, no I/O; the pack rules are pack_rules.py).

A spend order is an envelope `spend_order` {pack_id, sequence, amount, request_id,
executor}, signed by the pack's buyer. Three kinds:

- a spend;
- a *reservation* (``reserve``: the owner's `spend_delegation` {pack_id, delegate,
  max_credits}, an OpenAI API key): ``max_credits`` leave the pack for a pack of their own
  (``reservation_id(pack, delegation)``), whose buyer is the delegate and which lives until
  the delegation expires. The delegate then spends from that pack's own sequence, which no
  one else spends from: two supernodes delegated one pack never race for a sequence;
- a *settlement* (``settle``: a list of {request_id, amount}) on a reservation's pack, by
  its delegate: the requests it answered at once from the reservation, each at what it
  finally cost (unused tokens never charged: no refunds), certified together in one
  quorum round. ``amount`` is their sum, ``request_id`` ``settlement_id(items)``;
- a *close* (``close``: true) of a reservation, by its delegate or by the parent's buyer:
  its remaining credits, all of them, go back to the parent pack.

A vote is a member's attestation (kind `spend_vote`) of the order's terms; a quorum of
votes is the spend certificate {"order": <order envelope>, "votes": [...]}.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
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
from supernode.crypto.hashing import keccak
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


ModelName = Annotated[str, Field(min_length=1, max_length=128)]
SETTLE_ITEMS_MAX = 512  # requests one settlement carries
# A protocol constant: a delegate may still settle what it answered for this long after
# its key was revoked or expired (its last requests, a quorum briefly out of reach); the
# pack's owner may close the reservation itself only after it.
SETTLE_GRACE_S = 600


class DelegationPayload(Payload):
    """`spend_delegation`: supernode ``delegate`` may spend up to ``max_credits`` of the
    pack until the envelope expires (an OpenAI API key); optionally at most ``rpm``
    requests and ``tpm`` tokens (prompt and completion) a minute, ``max_in_flight``
    requests at once, and only the ``models`` listed. The limits are the delegate's to
    enforce (only it can spend under the key); the cap and expiry every voter checks."""

    pack_id: Hex32
    delegate: ChecksumAddress
    max_credits: Credits
    rpm: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    tpm: Annotated[int, Field(ge=1, le=MAX_INTEGER)] | None = None
    max_in_flight: Annotated[int, Field(ge=1, le=100_000)] | None = None
    models: Annotated[list[ModelName], Field(min_length=1, max_length=64)] | None = None


class SettleItem(Payload):
    """One request of a settlement: what it cost, unused tokens already taken off."""

    request_id: Hex32
    amount: Credits


class OrderPayload(Payload):
    """`spend_order`: spend ``amount`` credits of the pack at ``sequence`` for
    ``request_id``, run by ``executor``; or reserve them for the ``reserve`` delegation
    (the whole signed delegation envelope); or ``settle`` the requests listed; or
    ``close`` a reservation."""

    pack_id: Hex32
    sequence: Annotated[int, Field(ge=0, le=MAX_INTEGER)]
    amount: Credits
    request_id: Hex32
    executor: ChecksumAddress
    reserve: dict[str, Any] | None = None
    settle: Annotated[list[SettleItem], Field(min_length=1, max_length=SETTLE_ITEMS_MAX)] | None = (
        None
    )
    close: bool = False


def reservation_id(pack_id: str, delegation_id: str) -> str:
    """The id of the pack a reservation makes: keccak(parent pack id, delegation id)."""
    return "0x" + keccak(bytes.fromhex(pack_id[2:]) + bytes.fromhex(delegation_id[2:])).hex()


def settlement_id(request_ids: list[str]) -> str:
    """A settlement's ``request_id``: keccak of its requests' ids, in order."""
    return "0x" + keccak(b"".join(bytes.fromhex(r[2:]) for r in request_ids)).hex()


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


@dataclass(frozen=True)
class Order:
    """A spend order opened at the edge (shape, signatures, its delegation's): the
    envelope, its typed payload, and the delegation it reserves for, if any."""

    env: Envelope
    p: OrderPayload
    delegation: Envelope | None

    @property
    def id(self) -> str:
        return self.env.id

    @property
    def sender(self) -> str:
        return self.env.sender

    @property
    def pack_id(self) -> str:
        return self.p.pack_id

    @property
    def sequence(self) -> int:
        return self.p.sequence

    @property
    def amount(self) -> int:
        return self.p.amount

    @property
    def executor(self) -> str:
        return self.p.executor

    @property
    def delegation_id(self) -> str | None:
        return self.delegation.id if self.delegation is not None else None

    @property
    def kind(self) -> str:
        if self.delegation is not None:
            return "reserve"
        if self.p.settle is not None:
            return "settle"
        return "close" if self.p.close else "spend"

    def to_wire(self) -> dict[str, Any]:
        return self.env.to_wire()


def parse_order(raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int) -> Order:
    """Schema, binding, time window and signatures (the order's and its delegation's).
    The pack rules (owner, sequence, balance, cap) need the ledger: pack_rules.
    Pass NO_TIME_WINDOW for both windows to check a certified (possibly old) order."""
    env, p = _open(raw, SPEND_ORDER, OrderPayload, network, clock_skew_s, max_ttl_s)
    if network.member(p.executor) is None:
        raise Refused(f"executor {p.executor} is not a member", reason="unknown_executor")
    d = None
    if sum((p.reserve is not None, p.settle is not None, p.close)) > 1:
        raise BadRequest("an order reserves, settles or closes: one of them")
    if p.settle is not None:
        ids = [i.request_id for i in p.settle]
        if len(set(ids)) != len(ids):
            raise BadRequest("a settlement lists each request once")
        if p.amount != sum(i.amount for i in p.settle) or p.request_id != settlement_id(ids):
            raise BadRequest(
                "a settlement's amount is the sum of its requests' and its request_id "
                "settlement_id(their ids)"
            )
    if p.reserve is not None:
        d = parse_delegation(p.reserve, network, clock_skew_s=clock_skew_s, max_ttl_s=max_ttl_s)
        dp = d.payload
        if dp["pack_id"] != p.pack_id or d.sender != env.sender:
            raise Refused(
                "a reservation is signed by the pack's owner, for a delegation of that pack",
                reason="bad_delegation",
            )
        if p.amount != dp["max_credits"] or p.executor != dp["delegate"] or p.request_id != d.id:
            raise Refused(
                "a reservation's amount is the delegation's max_credits, its executor the "
                "delegate and its request_id the delegation's id",
                reason="bad_delegation",
            )
    return Order(env, p, d)


def parse_certified_order(raw: Any, network: NetworkFile) -> Order:
    """An order as a certificate carries it: checked like any, whatever its age."""
    return parse_order(raw, network, clock_skew_s=NO_TIME_WINDOW, max_ttl_s=NO_TIME_WINDOW)


def order_window(order: Order, now: float, *, clock_skew_s: int, max_ttl_s: int) -> str | None:
    """Why ``order`` may not get a *first* vote now ("from_future", "bad_expiry",
    "order_expired", "delegation_expired"), or None. A voter that voted for it already
    answers with that vote whatever the time (see voter.Voter)."""
    windows = [(order.env.created_at, order.env.expires_at, "order_expired")]
    if order.delegation is not None:
        d = order.delegation
        windows.append((d.created_at, d.expires_at, "delegation_expired"))
    for created, expires, expired in windows:
        if expires - created > max_ttl_s:
            return "bad_expiry"
        if created > now + clock_skew_s:
            return "from_future"
        if expires < now - clock_skew_s:
            return expired
    return None


def vote_terms(order: Order) -> dict[str, Any]:
    """What a member's vote for ``order`` attests (kind ``spend_vote``)."""
    return {
        "order_id": order.id,
        "pack_id": order.pack_id,
        "sequence": order.sequence,
        "amount": order.amount,
        "request_id": order.p.request_id,
        "executor": order.executor,
        "spender": order.sender,
        "delegation_id": order.delegation_id,
        "network_id": order.env.network_id,
        "chain_id": order.env.chain_id,
    }


def verify_spend_certificate(
    cert: Any, network: NetworkFile, eligible: Collection[str], quorum: int | None
) -> tuple[Order, dict[str, Any]]:
    """The order is the owner's (or its delegate's) and a quorum voted for it."""
    if (
        not isinstance(cert, dict)
        or set(cert) != {"order", "votes"}
        or not isinstance(cert["votes"], list)
    ):
        raise BadRequest('a spend certificate is {"order": ..., "votes": [...]}')
    order = parse_certified_order(cert["order"], network)
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
