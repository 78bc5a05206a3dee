"""The pack rules, one refusal reason at a time (and orders that meet them all): spends,
reservations of an API key's credits, their packs' spends, and closes."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from supernode.credits import pack_rules
from supernode.credits.orders import (
    DELEGATION,
    SPEND_ORDER,
    Order,
    OrderPayload,
    reservation_id,
)
from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity
from supernode.errors import Refused

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
    owner_closes = order(OWNER, sequence=0, amount=50, close=True)
    assert refusal(owner_closes, child(), parent=pack(), revoked=True) is None
    assert order(d=delegation()).kind == "reserve" and closing.kind == "close"
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
        (order(DELEGATE, sequence=0), child(), {"revoked": True}, "delegation_revoked"),
        (order(DELEGATE, sequence=0, at=NOW + 101), child(), {}, "delegation_expired"),
        (order(DELEGATE, sequence=0, amount=51), child(), {}, "insufficient_credits"),
        (order(close=True, amount=100), pack(), {}, "not_a_reservation"),
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
        pack_rules.usable_reservation(child(), NOW + 101, revoked=False)
    assert late.value.reason == "delegation_expired"
