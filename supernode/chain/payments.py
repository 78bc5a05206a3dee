"""Payment verification: a list of named checks, each with its own refusal reason.

A credit-pack payment is one transaction: to = the network's payment address,
from = the buyer, value >= the quoted wei, input = the purchase id, mined at or before
the quote's expiry block, with enough confirmations, and never used for another purchase.
Every peer runs these checks against its own view of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supernode.chain.client import ChainClient

OK, PENDING, REFUSED = "ok", "pending", "refused"


@dataclass(frozen=True)
class PaymentVerdict:
    status: str  # ok | pending | refused
    reason: str = ""
    detail: str = ""
    block_number: int | None = None
    confirmations: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def _refuse(reason: str, detail: str) -> PaymentVerdict:
    return PaymentVerdict(REFUSED, reason, detail)


async def verify_payment(
    chain: ChainClient,
    quote: dict[str, Any],
    tx_hash: str,
    *,
    used_by: str | None,
    chain_id: int,
    confirmations_required: int,
) -> PaymentVerdict:
    """Run the checks in order (the ledger's first: it is free); the first that fails
    refuses. Too few confirmations, or a transaction not mined yet, is *pending*."""
    purchase_id = quote["purchase_id"]
    if used_by is not None and used_by != purchase_id:
        return _refuse("tx_already_used", f"{tx_hash} already paid for purchase {used_by}")
    tx = await chain.transaction(tx_hash)
    if tx is None:
        return _refuse("tx_not_found", f"the chain does not know {tx_hash}")
    if tx.get("blockNumber") is None:
        return PaymentVerdict(PENDING, "not_mined", "the transaction is not in a block yet")
    receipt = await chain.receipt(tx_hash)
    if receipt is None:
        return PaymentVerdict(PENDING, "not_mined", "no receipt yet")
    block = int(receipt["blockNumber"])
    checks: list[tuple[bool, str, str]] = [
        (receipt.get("status") == 1, "tx_reverted", "the transaction reverted (status 0)"),
        (
            tx.get("chainId") == chain_id,
            "wrong_chain",
            f"transaction chain id {tx.get('chainId')}, network {chain_id}",
        ),
        (
            str(tx.get("to") or "").lower() == quote["payment_address"].lower(),
            "wrong_to",
            f"paid to {tx.get('to')}, not the payment address {quote['payment_address']}",
        ),
        (
            str(tx.get("from") or "").lower() == quote["buyer"].lower(),
            "wrong_from",
            f"paid from {tx.get('from')}, not the buyer {quote['buyer']}",
        ),
        (
            int(tx.get("value", 0)) >= int(quote["amount_wei"]),
            "value_too_low",
            f"paid {int(tx.get('value', 0))} wei, quoted {quote['amount_wei']}",
        ),
        (
            _hex(tx.get("input", b"")) == purchase_id.lower(),
            "wrong_input",
            "the transaction input is not the purchase id",
        ),
        (
            block <= int(quote["expiry_block"]),
            "quote_expired",
            f"mined in block {block}, the quote expired at block {quote['expiry_block']}",
        ),
    ]
    for passed, reason, detail in checks:
        if not passed:
            return _refuse(reason, detail)
    latest = await chain.block_number()
    confirmations = max(0, latest - block + 1)
    if confirmations < confirmations_required:
        return PaymentVerdict(
            PENDING,
            "awaiting_confirmations",
            f"{confirmations} of {confirmations_required} confirmations",
            block_number=block,
            confirmations=confirmations,
        )
    return PaymentVerdict(OK, block_number=block, confirmations=confirmations)
