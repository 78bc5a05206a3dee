"""The payment checks every witness runs before it attests a pack, one refusal reason at a
time, against a chain whose answers the test sets (the same checks run against anvil in
tests/integration/test_credit_packs.py)."""

from __future__ import annotations

from typing import Any

import pytest

from supernode.chain.payments import OK, PENDING, REFUSED, verify_payment

PURCHASE = "0x" + "ab" * 32
PAY_TO, BUYER = "0x" + "11" * 20, "0x" + "22" * 20
QUOTE = {
    "purchase_id": PURCHASE,
    "payment_address": PAY_TO,
    "buyer": BUYER,
    "amount_wei": 10**15,
    "expiry_block": 100,
}
TX = "0x" + "cd" * 32


class Chain:
    """The chain's answers about one transaction: what verify_payment reads."""

    def __init__(self, tx: dict[str, Any] | None, receipt: dict[str, Any] | None, latest: int):
        self.tx, self.rcpt, self.latest = tx, receipt, latest

    async def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        return self.tx

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return self.rcpt

    async def block_number(self) -> int:
        return self.latest


def paid(**changed: Any) -> Chain:
    tx = {"blockNumber": 90, "chainId": 31337, "to": PAY_TO, "from": BUYER, "value": 10**15}
    tx["input"] = PURCHASE
    receipt = {"blockNumber": 90, "status": 1}
    for k, v in changed.items():
        (receipt if k == "status" else tx)[k] = v
    return Chain(tx, receipt, latest=95)


async def verdict(chain: Chain, used_by: str | None = None, confirmations: int = 3):  # type: ignore[no-untyped-def]
    return await verify_payment(
        chain, QUOTE, TX, used_by=used_by, chain_id=31337, confirmations_required=confirmations
    )  # type: ignore[arg-type]


async def test_a_payment_that_meets_every_check_passes() -> None:
    v = await verdict(paid())
    assert (v.status, v.block_number, v.confirmations) == (OK, 90, 6)


@pytest.mark.parametrize(
    ("chain", "used_by", "reason"),
    [
        (paid(), "0x" + "ef" * 32, "tx_already_used"),
        (Chain(None, None, 95), None, "tx_not_found"),
        (paid(status=0), None, "tx_reverted"),
        (paid(chainId=1), None, "wrong_chain"),
        (paid(to="0x" + "33" * 20), None, "wrong_to"),
        (paid(**{"from": "0x" + "44" * 20}), None, "wrong_from"),
        (paid(value=10**15 - 1), None, "value_too_low"),
        (paid(input="0x"), None, "wrong_input"),
        (
            Chain({**paid().tx, "blockNumber": 101}, {"blockNumber": 101, "status": 1}, 110),
            None,
            "quote_expired",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_each_check_refuses_with_its_reason(
    chain: Chain, used_by: str | None, reason: str
) -> None:
    v = await verdict(chain, used_by)
    assert (v.status, v.reason) == (REFUSED, reason)


async def test_not_mined_or_too_few_confirmations_is_pending() -> None:
    assert (await verdict(paid(blockNumber=None))).status == PENDING
    v = await verdict(paid(), confirmations=10)
    assert (v.status, v.reason, v.confirmations) == (PENDING, "awaiting_confirmations", 6)
