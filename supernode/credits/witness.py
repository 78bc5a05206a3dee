"""The credit-pack purchase, a witness's side: a member's own checks and attestations,
asked by a peer (``rpc_agree_quote``, ``rpc_certify_purchase``) or by this daemon when it
sells (the same checks, the same signature), and the call side that asks every eligible
member at once (``gather``).

A witness agrees to a quote only after recomputing its price (credits/terms.py), and
attests a pack only after checking the payment on its own view of the chain
(chain/payments.py: every check named, each with its refusal reason) and binding the
transaction to the purchase durably: it never signs two packs for one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supernode.chain.client import ChainClient, ChainError
from supernode.chain.payments import PENDING, REFUSED, PaymentVerdict, verify_payment
from supernode.config import Settings
from supernode.credits.terms import (
    PACK_KIND,
    QUOTE_KIND,
    check_quote_terms,
    check_request,
    check_tx_hash,
    pack_terms,
    verify_quote,
)
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope, Payload
from supernode.crypto.keys import Identity
from supernode.errors import Conflict, Refused, Unavailable
from supernode.federation.gossip import Gossip
from supernode.federation.intake import Intake
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.rpc import ask_peers
from supernode.federation.signer import Signer
from supernode.federation.transport import sign_transport
from supernode.ledger import credits as repo
from supernode.ledger.db import Ledger

AGREE_REQUEST = "quote_agreement_request"
CERTIFY_REQUEST = "purchase_certify_request"


class AgreeRequestPayload(Payload):
    """`quote_agreement_request`: the buyer's signed request and the terms quoted for it."""

    request: dict[str, Any]
    terms: dict[str, Any]


class CertifyRequestPayload(Payload):
    """`purchase_certify_request`: the payment's transaction and the signed quote."""

    tx_hash: str
    quote: dict[str, Any]


class Witness:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        db: Ledger,
        chain: ChainClient,
        membership: Membership,
        intake: Intake,
        gossip: Gossip,
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.chain = chain
        self.membership = membership
        self.intake = intake
        self.gossip = gossip
        self.signer = Signer(identity, network, settings.envelope_ttl_s)

    def check_request(self, raw: Any) -> Envelope:
        """The buyer's signed purchase request, opened and within this network's limits."""
        return check_request(
            raw,
            self.network,
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
            max_credits=self.s.max_credits_per_pack,
        )

    async def latest_block(self) -> int:
        try:
            return await self.chain.block_number()
        except ChainError as exc:
            raise Unavailable(f"chain unreachable: {exc}") from exc

    # -- the call side: ask every eligible member at once, keep a quorum --------------------
    async def gather(
        self,
        kind: str,
        terms: dict[str, Any],
        path: str,
        request_type: str,
        payload: dict[str, Any],
        pick: Callable[[Any], Any],
    ) -> tuple[list[dict[str, str]], int, str]:
        """Our own attestation of ``terms`` plus peers' (``path``, a ``request_type``
        transport envelope carrying ``payload``) until a quorum; (sigs, quorum, why)."""
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        if q is None:
            raise Unavailable("no eligible members known yet (is the chain reachable?)")
        sigs = [self.signer.attest(kind, terms)] if self.me in eligible else []
        links = [self.gossip.links[a] for a in eligible if a in self.gossip.links]
        answers = await ask_peers(
            links,
            path,
            lambda link: sign_transport(
                self.identity, self.network, request_type, link.member.address, payload
            ),
            need=q - len(sigs),
            timeout_s=self.s.quorum_timeout_s,
        )
        sigs += answers.attestations(kind, terms, self.network, eligible, pick)
        return sigs, q, answers.summary()

    async def agreements(self, request: Envelope, terms: dict[str, Any]):  # type: ignore[no-untyped-def]
        """A quorum's agreements to the quote ``terms`` (see gather)."""
        return await self.gather(
            QUOTE_KIND,
            terms,
            "/p2p/agree_quote",
            AGREE_REQUEST,
            {"request": request.to_wire(), "terms": terms},
            lambda d: d.get("agreement"),
        )

    async def attestations(self, signed_quote: dict[str, Any], tx: str, pterms: dict[str, Any]):  # type: ignore[no-untyped-def]
        """A quorum's attestations of the pack ``pterms`` (see gather)."""
        return await self.gather(
            PACK_KIND,
            pterms,
            "/p2p/certify_purchase",
            CERTIFY_REQUEST,
            {"quote": signed_quote, "tx_hash": tx},
            lambda d: d.get("signature"),
        )

    # -- the peer side ------------------------------------------------------------------
    async def rpc_agree_quote(self, raw: Any) -> dict[str, Any]:
        """A member asks us to agree to its quote (/p2p/agree_quote): recompute, attest."""
        env, p = self.intake.open_transport(raw, AGREE_REQUEST, AgreeRequestPayload)
        request = self.check_request(p.request)
        check_quote_terms(
            p.terms,
            request,
            self.network,
            latest_block=await self.latest_block(),
            ttl_blocks=self.s.quote_ttl_blocks,
            quoted_by=env.sender,
        )
        return {"agreement": self.signer.attest(QUOTE_KIND, p.terms)}

    async def rpc_certify_purchase(self, raw: Any) -> dict[str, Any]:
        """A member asks us to certify a paid purchase (/p2p/certify_purchase): we check
        the chain ourselves, bind the payment, and attest the pack."""
        _, p = self.intake.open_transport(raw, CERTIFY_REQUEST, CertifyRequestPayload)
        tx = check_tx_hash(p.tx_hash)
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        terms = verify_quote(p.quote, self.network, eligible, q)
        async with self.db.write(repo.PURCHASES) as conn:
            repo.add_quote(conn, terms, canonical_json(p.quote), time.time())
        verdict = await self.check_payment(terms, tx)
        if verdict.status == REFUSED:
            raise Refused(verdict.detail, reason=verdict.reason)
        if verdict.status == PENDING:
            raise Conflict(verdict.detail, reason=verdict.reason)
        assert verdict.block_number is not None
        pterms = pack_terms(terms, tx, verdict.block_number)
        await self.bind(terms, tx)
        return {"terms": pterms, "signature": self.signer.attest(PACK_KIND, pterms)}

    # -- the checks a witness makes itself ---------------------------------------------
    async def check_payment(self, terms: dict[str, Any], tx: str) -> PaymentVerdict:
        """The payment, checked on this member's own view of the chain."""
        with self.db.read() as conn:
            used_by = repo.payment_user(conn, self.network.chain_id, tx)
        try:
            return await verify_payment(
                self.chain,
                terms,
                tx,
                used_by=used_by,
                chain_id=self.network.chain_id,
                confirmations_required=self.network.confirmations_required,
            )
        except ChainError as exc:
            raise Unavailable(f"chain unreachable: {exc}") from exc

    async def bind(self, terms: dict[str, Any], tx: str) -> None:
        """Bind the transaction to the purchase, durably, before attesting anything."""
        async with self.db.write(repo.PAYMENTS) as conn:
            bound = repo.bind_payment(
                conn, self.network.chain_id, tx, terms["purchase_id"], time.time()
            )
        if bound != terms["purchase_id"]:
            raise Refused(f"{tx} already paid for purchase {bound}", reason="tx_already_used")
