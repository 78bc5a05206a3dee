"""The pack rules, one refusal reason at a time (and an order that meets them all)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from supernode.credits import pack_rules
from supernode.credits.orders import DELEGATION, SPEND_ORDER, Order, OrderPayload
from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity
from supernode.errors import Refused

OWNER, DELEGATE, STRANGER = Identity.generate(), Identity.generate(), Identity.generate()
PACK_ID = "0x" + "ab" * 32


def pack(**kw: Any) -> dict[str, Any]:
    return {"buyer": OWNER.address, "next_sequence": 3, "remaining_credits": 100, **kw}


def delegation(signer: Identity = OWNER, max_credits: int = 50) -> Envelope:
    return sign_envelope(
        signer,
        type_=DELEGATION,
        network_id="n",
        chain_id=1,
        payload={"pack_id": PACK_ID, "delegate": DELEGATE.address, "max_credits": max_credits},
    )


def order(
    signer: Identity = OWNER, sequence: int = 3, amount: int = 10, d: Envelope | None = None
) -> Order:
    payload: dict[str, Any] = {
        "pack_id": PACK_ID,
        "sequence": sequence,
        "amount": amount,
        "request_id": "0x" + secrets.token_hex(32),
        "executor": DELEGATE.address,
    }
    if d is not None:
        payload["delegation"] = d.to_wire()
    env = sign_envelope(signer, type_=SPEND_ORDER, network_id="n", chain_id=1, payload=payload)
    return Order(env, OrderPayload.model_validate(env.payload), d)


def refusal(o: Order, p: dict[str, Any] | None, spent: int = 0) -> str | None:
    try:
        pack_rules.check_order(o, p, spent)
    except Refused as exc:
        return exc.reason
    return None


def test_an_order_that_meets_every_rule_passes() -> None:
    assert refusal(order(), pack()) is None
    assert refusal(order(DELEGATE, d=delegation()), pack(), spent=40) is None


@pytest.mark.parametrize(
    ("o", "p", "spent", "reason"),
    [
        (order(), None, 0, "unknown_pack"),
        (order(STRANGER), pack(), 0, "not_owner"),
        (order(DELEGATE, d=delegation(STRANGER)), pack(), 0, "bad_delegation"),
        (order(DELEGATE, amount=11, d=delegation()), pack(), 40, "delegation_cap"),
        (order(sequence=2), pack(), 0, "stale_sequence"),
        (order(sequence=4), pack(), 0, "sequence_ahead"),
        (order(amount=101), pack(), 0, "insufficient_credits"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_rule_refuses_with_its_reason(
    o: Order, p: dict[str, Any] | None, spent: int, reason: str
) -> None:
    assert refusal(o, p, spent) == reason


def test_the_quote_side_uses_the_same_rules() -> None:
    with pytest.raises(Refused) as unknown:
        pack_rules.known_pack(None, PACK_ID)
    assert unknown.value.reason == "unknown_pack"
    with pytest.raises(Refused) as poor:
        pack_rules.affordable(pack(), 101)
    assert poor.value.reason == "insufficient_credits"
