"""The rules a spend must meet against its pack, written once.

A voter checks an order with ``check_order``; a supernode quoting a request (native or
OpenAI path) checks the same rules before it asks anyone to vote, with the same reasons:

==================== ===================================================================
reason               the rule
==================== ===================================================================
unknown_pack         the pack is certified and known here
not_owner            the order (or the request) is signed by the pack's buyer...
bad_delegation       ...or by a delegate, under a delegation the buyer signed
delegation_cap       a delegate spends at most the delegation's ``max_credits`` in all
stale_sequence       the order's sequence is not spent already...
sequence_ahead       ...nor beyond the pack's next (this member may be behind)
insufficient_credits the amount fits in what the pack holds
==================== ===================================================================
"""

from __future__ import annotations

from typing import Any

from supernode.credits.orders import Order
from supernode.crypto.envelope import Envelope
from supernode.errors import Refused


def known_pack(pack: dict[str, Any] | None, pack_id: str) -> dict[str, Any]:
    if pack is None:
        raise Refused(f"no certified pack {pack_id} known here", reason="unknown_pack")
    return pack


def signed_for(pack: dict[str, Any], signer: str, delegation: Envelope | None) -> None:
    """``signer`` may spend from the pack: its buyer, or a delegate of the buyer's."""
    if delegation is None:
        if signer != pack["buyer"]:
            raise Refused("not signed by the pack's owner", reason="not_owner")
    elif delegation.sender != pack["buyer"]:
        raise Refused("the delegation is not signed by the pack's owner", reason="bad_delegation")


def within_cap(delegation: Envelope | None, spent: int, amount: int) -> None:
    """A delegate's ``amount`` more, with ``spent`` certified under it so far, fits its cap."""
    if delegation is None:
        return
    cap = delegation.payload["max_credits"]
    if spent + amount > cap:
        raise Refused(
            f"the delegation allows {cap} credits: {spent} spent, {amount} more asked",
            reason="delegation_cap",
        )


def affordable(pack: dict[str, Any], amount: int) -> None:
    if amount > pack["remaining_credits"]:
        raise Refused(
            f"amount {amount} > remaining {pack['remaining_credits']}",
            reason="insufficient_credits",
        )


def next_in_line(pack: dict[str, Any], sequence: int) -> None:
    if sequence < pack["next_sequence"]:
        raise Refused(
            f"sequence {sequence} is spent; next is {pack['next_sequence']}",
            reason="stale_sequence",
        )
    if sequence > pack["next_sequence"]:
        raise Refused(
            f"sequence {sequence}; this peer expects {pack['next_sequence']}",
            reason="sequence_ahead",
        )


def check_order(order: Order, pack: dict[str, Any] | None, delegated_spent: int = 0) -> None:
    """Every rule, for an order a member is asked to vote for; ``delegated_spent`` is what
    was certified under its delegation so far."""
    pack = known_pack(pack, order.pack_id)
    signed_for(pack, order.sender, order.delegation)
    within_cap(order.delegation, delegated_spent, order.amount)
    next_in_line(pack, order.sequence)
    affordable(pack, order.amount)
