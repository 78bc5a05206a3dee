"""The pack rules, one refusal reason at a time (and orders that meet them all): spends,
reservations of an API key's credits, their packs' spends and settlements, and closes."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from supernode.credits import pack_rules
from supernode.credits.orders import (
    DELEGATION,
    SETTLE_GRACE_S,
    SPEND_ORDER,
    Order,
    OrderPayload,
    parse_order,
    reservation_id,
    settlement_id,
)
from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Refused
from supernode.federation.network import Member, NetworkFile

OWNER, DELEGATE, STRANGER = Identity.generate(), Identity.generate(), Identity.generate()
PACK_ID = "0x" + "ab" * 32
NOW = 1_000_000


def pack(**kw: Any) -> dict[str, Any]:
    return {"buyer": OWNER.address, "next_sequence": 3, "remaining_credits": 100, **kw}


def child(**kw: Any) -> dict[str, Any]:
    """A reservation's pack: the delegate's, expiring at NOW + 100."""
    return {
        "buyer": DELEGATE.address,
        "next_sequence": 0,
        "remaining_credits": 50,
        "parent_pack_id": PACK_ID,
        "delegation_id": "0x" + "dd" * 32,
        "expires_at": NOW + 100,
        **kw,
    }


def delegation(signer: Identity = OWNER, max_credits: int = 50) -> Envelope:
    return sign_envelope(
        signer,
        type_=DELEGATION,
        network_id="n",
        chain_id=1,
        payload={"pack_id": PACK_ID, "delegate": DELEGATE.address, "max_credits": max_credits},
    )


def order(
    signer: Identity = OWNER,
    sequence: int = 3,
    amount: int = 10,
    d: Envelope | None = None,
    close: bool = False,
    at: int = NOW,
    settle: list[int] | None = None,
) -> Order:
    payload: dict[str, Any] = {
        "pack_id": PACK_ID,
        "sequence": sequence,
        "amount": amount,
        "request_id": d.id if d is not None else "0x" + secrets.token_hex(32),
        "executor": DELEGATE.address,
    }
    if d is not None:
        payload["reserve"] = d.to_wire()
    if close:
        payload["close"] = True
    if settle is not None:  # the amounts of requests answered from the reservation
        items = [{"request_id": "0x" + secrets.token_hex(32), "amount": a} for a in settle]
        payload.update(
            settle=items,
            amount=sum(settle),
            request_id=settlement_id([i["request_id"] for i in items]),
        )
    env = sign_envelope(
        signer, type_=SPEND_ORDER, network_id="n", chain_id=1, payload=payload, now=at
    )
    return Order(env, OrderPayload.model_validate(env.payload), d)


def refusal(o: Order, p: dict[str, Any] | None, **kw: Any) -> str | None:
    try:
        pack_rules.check_order(o, p, **kw)
    except Refused as exc:
        return exc.reason
    return None


def test_orders_that_meet_every_rule_pass() -> None:
    assert refusal(order(), pack()) is None
    assert refusal(order(d=delegation(), amount=50), pack()) is None  # a reservation
    assert refusal(order(DELEGATE, sequence=0), child()) is None  # the key spends
    closing = order(DELEGATE, sequence=0, amount=50, close=True)
    assert refusal(closing, child(), parent=pack()) is None
    # the owner closes once the key ended and its delegate had its grace to settle
    owner_closes = order(OWNER, sequence=0, amount=50, close=True, at=NOW + 50 + SETTLE_GRACE_S + 1)
    assert refusal(owner_closes, child(), parent=pack(), revoked_at=NOW + 50) is None
    settles = order(DELEGATE, sequence=0, settle=[10, 20])
    assert refusal(settles, child()) is None
    # a settlement of what was answered before the key ended, within the grace
    assert (
        refusal(order(DELEGATE, 0, settle=[5], at=NOW + 60), child(), revoked_at=NOW + 50) is None
    )
    assert refusal(order(DELEGATE, 0, settle=[5], at=NOW + 150), child()) is None
    assert order(d=delegation()).kind == "reserve" and closing.kind == "close"
    assert settles.kind == "settle" and settles.amount == 30
    assert reservation_id(PACK_ID, "0x" + "dd" * 32).startswith("0x")


@pytest.mark.parametrize(
    ("o", "p", "kw", "reason"),
    [
        (order(), None, {}, "unknown_pack"),
        (order(STRANGER), pack(), {}, "not_owner"),
        (order(sequence=2), pack(), {}, "stale_sequence"),
        (order(sequence=4), pack(), {}, "sequence_ahead"),
        (order(amount=101), pack(), {}, "insufficient_credits"),
        (order(d=delegation(), amount=50), pack(), {"reserved": True}, "already_reserved"),
        (order(DELEGATE, sequence=0, d=delegation()), child(), {}, "not_a_reservation"),
        (order(OWNER, sequence=0), child(), {}, "not_owner"),  # only the delegate spends
        (order(DELEGATE, sequence=0), child(), {"revoked_at": NOW - 1}, "delegation_revoked"),
        (order(DELEGATE, sequence=0, at=NOW + 101), child(), {}, "delegation_expired"),
        (order(DELEGATE, sequence=0, amount=51), child(), {}, "insufficient_credits"),
        (order(close=True, amount=100), pack(), {}, "not_a_reservation"),
        (order(settle=[10]), pack(), {}, "not_a_reservation"),
        (order(DELEGATE, 0, settle=[30, 21]), child(), {}, "insufficient_credits"),
        (order(OWNER, 0, settle=[10]), child(), {}, "not_owner"),
        (
            order(DELEGATE, 0, settle=[5], at=NOW + 51 + SETTLE_GRACE_S),
            child(),
            {"revoked_at": NOW + 50},
            "delegation_revoked",
        ),
        (
            order(DELEGATE, 0, settle=[5], at=NOW + 101 + SETTLE_GRACE_S),
            child(),
            {},
            "delegation_expired",
        ),
        (  # the owner may not close a live key's reservation...
            order(OWNER, sequence=0, amount=50, close=True),
            child(),
            {"parent": pack()},
            "not_settled_yet",
        ),
        (  # ...nor one whose delegate may still settle
            order(OWNER, sequence=0, amount=50, close=True, at=NOW + 60),
            child(),
            {"parent": pack(), "revoked_at": NOW + 50},
            "not_settled_yet",
        ),
        (
            order(STRANGER, sequence=0, amount=50, close=True),
            child(),
            {"parent": pack()},
            "not_owner",
        ),
        (
            order(DELEGATE, sequence=0, amount=49, close=True),
            child(),
            {"parent": pack()},
            "close_amount",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_rule_refuses_with_its_reason(
    o: Order, p: dict[str, Any] | None, kw: dict[str, Any], reason: str
) -> None:
    assert refusal(o, p, **kw) == reason


def test_the_quote_side_uses_the_same_rules() -> None:
    with pytest.raises(Refused) as unknown:
        pack_rules.known_pack(None, PACK_ID)
    assert unknown.value.reason == "unknown_pack"
    with pytest.raises(Refused) as poor:
        pack_rules.affordable(pack(), 101)
    assert poor.value.reason == "insufficient_credits"
    with pytest.raises(Refused) as late:
        pack_rules.usable_reservation(child(), NOW + 101, revoked_at=None)
    assert late.value.reason == "delegation_expired"


NETWORK = NetworkFile(
    network_id="n",
    chain_id=1,
    payment_address=OWNER.address,
    credit_price_wei=1,
    min_collateral_wei=1,
    confirmations_required=1,
    epoch_blocks=10,
    members=[
        Member(
            address=DELEGATE.address, url="http://127.0.0.1:1", public_key=DELEGATE.public_key_hex
        )
    ],
)


def test_a_settlement_must_add_up() -> None:
    """Its amount is its requests' sum, its request_id their settlement_id, each request
    once; and an order settles, reserves or closes, never two of them."""
    good = order(DELEGATE, 0, settle=[3, 4])
    wire = good.env.payload
    parse_order(good.to_wire(), NETWORK, clock_skew_s=10**12, max_ttl_s=10**12)

    def refused(**change: Any) -> None:
        env = sign_envelope(
            DELEGATE, type_=SPEND_ORDER, network_id="n", chain_id=1, payload={**wire, **change}
        )
        with pytest.raises(BadRequest):
            parse_order(env.to_wire(), NETWORK, clock_skew_s=10**12, max_ttl_s=10**12)

    refused(amount=8)
    refused(request_id="0x" + "00" * 32)
    twice = [wire["settle"][0], wire["settle"][0]]
    refused(settle=twice, amount=6, request_id=settlement_id([i["request_id"] for i in twice]))
    refused(close=True)
