"""The rules a spend must meet against its pack, written once.

A voter checks an order with ``check_order``; a supernode quoting a request (native or
OpenAI path) checks the same rules before it asks anyone to vote, with the same reasons:

==================== ===================================================================
reason               the rule
==================== ===================================================================
unknown_pack         the pack is certified and known here
not_owner            the order (or the request) is signed by the pack's buyer (for a
                     reservation's pack: the key's delegate; a close also by the parent's)
delegation_revoked   a reservation's pack spends nothing once its key is revoked...
delegation_expired   ...nor by an order signed after the key expired (a settlement of
                     requests answered before: until SETTLE_GRACE_S after)
not_settled_yet      the parent's owner closes a reservation only once the key is
                     revoked or expired and its delegate's grace to settle is over
already_reserved     a delegation is reserved once
not_a_reservation    only a reservation's pack is closed, and a reservation's pack does
                     not reserve
close_amount         a close gives back all the reservation holds, no more, no less
stale_sequence       the order's sequence is not spent already...
sequence_ahead       ...nor beyond the pack's next (this member may be behind)
insufficient_credits the amount fits in what the pack holds
==================== ===================================================================
"""

from __future__ import annotations

from typing import Any

from supernode.credits.orders import SETTLE_GRACE_S, Order
from supernode.errors import Refused


def known_pack(pack: dict[str, Any] | None, pack_id: str) -> dict[str, Any]:
    if pack is None:
        raise Refused(f"no certified pack {pack_id} known here", reason="unknown_pack")
    return pack


def signed_for(pack: dict[str, Any], signer: str) -> None:
    """``signer`` may spend from the pack: its buyer."""
    if signer != pack["buyer"]:
        raise Refused("not signed by the pack's owner", reason="not_owner")


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


def usable_reservation(
    pack: dict[str, Any], signed_at: float, revoked_at: float | None, grace_s: float = 0.0
) -> None:
    """A reservation's pack may be spent from: its key not revoked, the order signed
    before the key expired (the order's own time: every member judges it alike).
    ``grace_s``: a settlement, of requests answered before, may come that much later."""
    if pack.get("parent_pack_id") is None:
        return
    if revoked_at is not None and (not grace_s or signed_at > revoked_at + grace_s):
        raise Refused("this API key was revoked by its owner", reason="delegation_revoked")
    if pack["expires_at"] is not None and signed_at > pack["expires_at"] + grace_s:
        raise Refused("this API key has expired", reason="delegation_expired")


def key_ended_at(pack: dict[str, Any], revoked_at: float | None) -> float | None:
    """When a reservation's key stopped: revoked or expired, the earlier; None if live."""
    ends = [t for t in (revoked_at, pack["expires_at"]) if t is not None]
    return min(ends) if ends else None


def check_order(
    order: Order,
    pack: dict[str, Any] | None,
    *,
    parent: dict[str, Any] | None = None,
    revoked_at: float | None = None,
    reserved: bool = False,
) -> None:
    """Every rule, for an order a member is asked to vote for. ``parent``: the pack a
    reservation's pack came from; ``revoked_at``: when its key was revoked; ``reserved``:
    the delegation a reservation order funds already has its pack."""
    pack = known_pack(pack, order.pack_id)
    signed_at = order.env.created_at
    if order.p.close:
        if pack.get("parent_pack_id") is None:
            raise Refused("only a reservation's pack is closed", reason="not_a_reservation")
        if order.sender != pack["buyer"]:
            if parent is None or order.sender != parent["buyer"]:
                raise Refused("not signed by the delegate or the pack's owner", reason="not_owner")
            ended = key_ended_at(pack, revoked_at)
            if ended is None or signed_at <= ended + SETTLE_GRACE_S:
                raise Refused(
                    "the owner closes a reservation once its key is revoked or expired and "
                    f"its delegate had {SETTLE_GRACE_S} s to settle what it answered",
                    reason="not_settled_yet",
                )
        next_in_line(pack, order.sequence)
        if order.amount != pack["remaining_credits"]:
            raise Refused(
                f"a close gives back all {pack['remaining_credits']} credits, not {order.amount}",
                reason="close_amount",
            )
        return
    signed_for(pack, order.sender)
    if order.delegation is not None:
        if pack.get("parent_pack_id") is not None:
            raise Refused("a reservation's pack does not reserve", reason="not_a_reservation")
        if reserved:
            raise Refused("this delegation is reserved already", reason="already_reserved")
    settles = order.p.settle is not None
    if settles and pack.get("parent_pack_id") is None:
        raise Refused("only a reservation's pack is settled", reason="not_a_reservation")
    usable_reservation(pack, signed_at, revoked_at, SETTLE_GRACE_S if settles else 0.0)
    next_in_line(pack, order.sequence)
    affordable(pack, order.amount)
