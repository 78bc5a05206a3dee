"""Gossip types of the purchase flow: signed quotes and credit-pack certificates.

Each peer re-checks the quorum of signatures itself (eligible members, distinct,
enough) before storing; a certificate also binds its transaction to the purchase."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from supernode.credits.purchase import CERTIFICATE_ENVELOPE, QUOTE_ENVELOPE
from supernode.credits.terms import verify_pack_certificate, verify_quote
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope
from supernode.federation.handlers import Checked
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.ledger import credits as repo
from supernode.ledger import spends as spends_repo


class _Certified:
    """A gossip type whose payload is a quorum certificate: ``verify`` checks it against
    the eligible members this daemon knows now."""

    verify: Callable[[Any, NetworkFile, list[str], int | None], Any]

    def __init__(self, network: NetworkFile, membership: Membership) -> None:
        self.network = network
        self.membership = membership

    def validate(self, env: Envelope) -> dict[str, Any]:
        """The certified terms; raises what the check found (its verdict for the peer:
        errors.TABLE)."""
        return self.verify(
            env.payload,
            self.network,
            self.membership.eligible_members(),
            self.membership.quorum(),
        )


class QuoteHandler(_Certified):
    type = QUOTE_ENVELOPE
    record = repo.PURCHASES
    verify = staticmethod(verify_quote)

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        for c in items:
            repo.add_quote(conn, c.parsed, canonical_json(c.env.payload), received_at)


class CertificateHandler(_Certified):
    type = CERTIFICATE_ENVELOPE
    record = repo.PACKS  # with the payment it binds and the spends it lets apply
    verify = staticmethod(verify_pack_certificate)

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        for c in items:
            t = c.parsed
            repo.add_pack(
                conn,
                {
                    "pack_id": t["pack_id"],
                    "buyer": t["buyer"],
                    "credits": t["credits"],
                    "remaining_credits": t["credits"],
                    "amount_wei": str(t["amount_wei"]),
                    "chain_id": t["chain_id"],
                    "tx_hash": t["tx_hash"],
                    "block_number": t["block_number"],
                    "certificate": canonical_json(c.env.payload),
                    "certified_at": received_at,
                },
            )
            repo.bind_payment(conn, t["chain_id"], t["tx_hash"], t["purchase_id"], received_at)
            repo.set_status(
                conn,
                t["purchase_id"],
                repo.CERTIFIED,
                now=received_at,
                tx_hash=t["tx_hash"],
                detail=None,
                confirming=False,
            )
            # spends certified before the pack reached us apply now
            spends_repo.apply_ready(conn, t["pack_id"])
