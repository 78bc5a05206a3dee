"""The credit-pack purchase flow (docs/protocols.md).

Quote: the supernode prices the buyer's request and gets eligible peers to agree
(each recomputes the price and attests). Confirm: every member checks the payment on
chain itself, binds the transaction to the purchase durably, then attests the pack; a
quorum of those attestations is the certificate, gossiped to all. Everything is
idempotent by purchase id and transaction hash, so the buyer may retry anywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from supernode.chain.client import ChainClient, ChainError
from supernode.chain.payments import PENDING, REFUSED, verify_payment
from supernode.config import Settings
from supernode.credits.terms import (
    PACK_KIND,
    QUOTE_KIND,
    check_quote_terms,
    check_request,
    check_tx_hash,
    pack_terms,
    purchase_id_for,
    quote_terms,
    verify_quote,
)
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope, Payload
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Conflict, NotFound, Refused, Unavailable
from supernode.federation.gossip import Gossip
from supernode.federation.intake import Intake
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.rpc import ask_peers
from supernode.federation.signer import Signer
from supernode.federation.transport import sign_transport
from supernode.ledger import credits as repo
from supernode.ledger.db import Ledger
from supernode.locks import KeyedLock

QUOTE_ENVELOPE = "credit_pack_quote"
CERTIFICATE_ENVELOPE = "credit_pack_certificate"
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


PENDING_BATCH = 50


class CreditService:
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
        publish: Callable[[Envelope], Awaitable[Any]],
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
        self.publish = publish
        # one certification attempt per purchase at a time (confirms and the job)
        self._certifying = KeyedLock()
        self.signer = Signer(identity, network, settings.envelope_ttl_s)

    # -- helpers ------------------------------------------------------------------------
    def _eligible(self) -> tuple[list[str], int | None]:
        return self.membership.eligible_members(), self.membership.quorum()

    async def _gather(
        self,
        kind: str,
        terms: dict[str, Any],
        path: str,
        request_type: str,
        payload: dict[str, Any],
        pick: Callable[[Any], Any],
    ) -> tuple[list[dict[str, str]], int, str]:
        """Our own attestation plus peers' until a quorum; returns (sigs, quorum, why)."""
        eligible, q = self._eligible()
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

    # -- quote --------------------------------------------------------------------------
    def _check_request(self, raw: Any) -> Envelope:
        return check_request(
            raw,
            self.network,
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
            max_credits=self.s.max_credits_per_pack,
        )

    async def _latest_block(self) -> int:
        try:
            return await self.chain.block_number()
        except ChainError as exc:
            raise Unavailable(f"chain unreachable: {exc}") from exc

    async def quote(self, raw_request: Any) -> dict[str, Any]:
        """Price the buyer's request and get a quorum to agree; idempotent per request."""
        request = self._check_request(raw_request)
        purchase_id = purchase_id_for(request.id)
        with self.db.read() as conn:
            known = repo.get_purchase(conn, purchase_id)
        if known is not None:
            return json.loads(known["quote"])
        latest = await self._latest_block()
        terms = quote_terms(
            request, self.network, expiry_block=latest + self.s.quote_ttl_blocks, quoted_by=self.me
        )
        await self._check_funds(request.sender, terms["amount_wei"])
        agreements, q, why = await self._gather(
            QUOTE_KIND,
            terms,
            "/p2p/agree_quote",
            AGREE_REQUEST,
            {"request": request.to_wire(), "terms": terms},
            lambda d: d.get("agreement"),
        )
        if len(agreements) < q:
            raise Unavailable(f"price agreed by {len(agreements)} of the {q} members needed; {why}")
        quote = {"terms": terms, "agreements": agreements}
        await self.publish(self.signer.sign(QUOTE_ENVELOPE, quote))
        logger.info(
            "quote {} for {} credits ({} wei) by {}: {} agreements",
            purchase_id,
            terms["credits"],
            terms["amount_wei"],
            terms["buyer"],
            len(agreements),
        )
        return quote

    async def _check_funds(self, buyer: str, amount_wei: int) -> None:
        """A buyer who cannot pay gets no quote: a quote is stored at every member, so
        quotes nobody can pay would be free storage for anyone with a fresh key."""
        try:
            balance = await self.chain.balance(buyer)
        except ChainError as exc:
            raise Unavailable(f"chain unreachable: {exc}") from exc
        if balance < amount_wei:
            raise Refused(
                f"{buyer} holds {balance} wei; the pack costs {amount_wei} wei (plus gas)",
                reason="insufficient_funds",
            )

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {"purchase_locks": len(self._certifying)}

    async def prune_quotes(self) -> int:
        """Forget unpaid quotes a full quote lifetime past their expiry block."""
        try:
            latest = await self.chain.block_number()
        except ChainError as exc:
            logger.warning("unpaid quotes not pruned: chain unreachable ({})", exc)
            return 0
        async with self.db.write(repo.PURCHASES) as conn:
            n = repo.prune_unpaid_quotes(conn, latest - self.s.quote_ttl_blocks)
        if n:
            logger.info("forgot {} unpaid quotes past their expiry", n)
        return n

    async def rpc_agree_quote(self, raw: Any) -> dict[str, Any]:
        """A member asks us to agree to its quote (/p2p/agree_quote): recompute it and
        attest."""
        env, p = self.intake.open_transport(raw, AGREE_REQUEST, AgreeRequestPayload)
        request = self._check_request(p.request)
        terms = p.terms
        latest = await self._latest_block()
        check_quote_terms(
            terms,
            request,
            self.network,
            latest_block=latest,
            ttl_blocks=self.s.quote_ttl_blocks,
            quoted_by=env.sender,
        )
        assert isinstance(terms, dict)
        return {"agreement": self.signer.attest(QUOTE_KIND, terms)}

    # -- confirm ------------------------------------------------------------------------
    async def confirm(self, purchase_id: str, tx_hash: Any, quote: Any | None) -> dict[str, Any]:
        """The buyer paid: check, gather a quorum, certify. Pending stays pending (a job
        finishes it); refused says why."""
        tx = check_tx_hash(tx_hash)
        with self.db.read() as conn:
            pack = repo.get_pack(conn, purchase_id)
            known = repo.get_purchase(conn, purchase_id)
        if pack is not None:
            if pack["tx_hash"] != tx:
                raise Refused(
                    f"purchase already certified with {pack['tx_hash']}", reason="already_certified"
                )
            return {"status": repo.CERTIFIED, "pack": pack_view(pack)}
        if known is not None:
            signed_quote = json.loads(known["quote"])
        elif quote is not None:
            signed_quote = quote
        else:
            raise NotFound(f"unknown purchase {purchase_id}: send the signed quote with it")
        eligible, q = self._eligible()
        terms = verify_quote(signed_quote, self.network, eligible, q)
        if terms["purchase_id"] != purchase_id:
            raise BadRequest("the quote is for another purchase")
        now = time.time()
        async with self.db.write(repo.PURCHASES) as conn:
            repo.add_quote(conn, terms, canonical_json(signed_quote), now)
            repo.set_status(
                conn,
                purchase_id,
                repo.PENDING,
                now=now,
                tx_hash=tx,
                detail="checking the payment",
                confirming=True,
            )
        return await self.try_certify(signed_quote, tx)

    async def _check_payment(self, terms: dict[str, Any], tx: str):  # type: ignore[no-untyped-def]
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

    async def _bind(self, terms: dict[str, Any], tx: str) -> None:
        async with self.db.write(repo.PAYMENTS) as conn:
            bound = repo.bind_payment(
                conn, self.network.chain_id, tx, terms["purchase_id"], time.time()
            )
        if bound != terms["purchase_id"]:
            raise Refused(f"{tx} already paid for purchase {bound}", reason="tx_already_used")

    async def try_certify(self, signed_quote: dict[str, Any], tx: str) -> dict[str, Any]:
        """One certification attempt per purchase at a time (a confirm and the pending job
        must not both run the quorum round for it)."""
        pid = signed_quote["terms"]["purchase_id"]
        async with self._certifying.hold(pid):
            with self.db.read() as conn:
                pack = repo.get_pack(conn, pid)
            if pack is not None:  # certified while we waited
                return {"status": repo.CERTIFIED, "pack": pack_view(pack)}
            return await self._try_certify(signed_quote, tx)

    async def _try_certify(self, signed_quote: dict[str, Any], tx: str) -> dict[str, Any]:
        terms = signed_quote["terms"]
        pid = terms["purchase_id"]
        verdict = await self._check_payment(terms, tx)
        if verdict.status == REFUSED:
            async with self.db.write(repo.PURCHASES) as conn:
                repo.set_status(
                    conn,
                    pid,
                    repo.REFUSED,
                    now=time.time(),
                    detail=f"{verdict.reason}: {verdict.detail}",
                    confirming=False,
                )
            logger.info("purchase {} refused: {} {}", pid, verdict.reason, verdict.detail)
            raise Refused(verdict.detail, reason=verdict.reason)
        if verdict.status == PENDING:
            async with self.db.write(repo.PURCHASES) as conn:
                repo.set_status(
                    conn,
                    pid,
                    repo.PENDING,
                    now=time.time(),
                    detail=f"{verdict.reason}: {verdict.detail}",
                )
            return {"status": repo.PENDING, "reason": verdict.reason, "detail": verdict.detail}
        assert verdict.block_number is not None
        pterms = pack_terms(terms, tx, verdict.block_number)
        await self._bind(terms, tx)
        sigs, q, why = await self._gather(
            PACK_KIND,
            pterms,
            "/p2p/certify_purchase",
            CERTIFY_REQUEST,
            {"quote": signed_quote, "tx_hash": tx},
            lambda d: d.get("signature"),
        )
        if len(sigs) < q:
            detail = f"certified by {len(sigs)} of the {q} members needed; {why}"
            async with self.db.write(repo.PURCHASES) as conn:
                repo.set_status(
                    conn, pid, repo.PENDING, now=time.time(), detail=f"awaiting_quorum: {detail}"
                )
            raise Unavailable(detail, reason="awaiting_quorum")
        cert = {"terms": pterms, "signatures": sigs}
        await self.publish(self.signer.sign(CERTIFICATE_ENVELOPE, cert))
        logger.info(
            "credit pack {} certified ({} credits, tx {}, {} signatures)",
            pid,
            pterms["credits"],
            tx,
            len(sigs),
        )
        with self.db.read() as conn:
            pack = repo.get_pack(conn, pid)
        assert pack is not None
        return {"status": repo.CERTIFIED, "pack": pack_view(pack)}

    async def rpc_certify_purchase(self, raw: Any) -> dict[str, Any]:
        """A member asks us to certify a paid purchase (/p2p/certify_purchase): we check
        the chain ourselves."""
        _, p = self.intake.open_transport(raw, CERTIFY_REQUEST, CertifyRequestPayload)
        tx = check_tx_hash(p.tx_hash)
        signed_quote = p.quote
        eligible, q = self._eligible()
        terms = verify_quote(signed_quote, self.network, eligible, q)
        assert isinstance(signed_quote, dict)
        now = time.time()
        async with self.db.write(repo.PURCHASES) as conn:
            repo.add_quote(conn, terms, canonical_json(signed_quote), now)
        verdict = await self._check_payment(terms, tx)
        if verdict.status == REFUSED:
            raise Refused(verdict.detail, reason=verdict.reason)
        if verdict.status == PENDING:
            raise Conflict(verdict.detail, reason=verdict.reason)
        assert verdict.block_number is not None
        pterms = pack_terms(terms, tx, verdict.block_number)
        await self._bind(terms, tx)
        return {"terms": pterms, "signature": self.signer.attest(PACK_KIND, pterms)}

    async def finish_pending(self) -> int:
        """Job: retry purchases this daemon was asked to confirm. Returns how many it
        certified."""
        with self.db.read() as conn:
            rows = repo.confirming_pending(conn, PENDING_BATCH)
        done = 0
        fresh = time.time() - self.s.pending_purchase_interval_s
        for row in rows:
            if row["purchase_id"] in self._certifying or row["updated_at"] > fresh:
                continue  # a confirm is on it, or it was tried a moment ago
            try:
                result = await self.try_certify(json.loads(row["quote"]), row["tx_hash"])
            except (Refused, Unavailable, Conflict) as exc:
                logger.debug("purchase {} still not certified: {}", row["purchase_id"], exc)
                continue
            if result["status"] == repo.CERTIFIED:
                done += 1
        return done

    # -- reads --------------------------------------------------------------------------
    def status(self, purchase_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = repo.get_purchase(conn, purchase_id)
            pack = repo.get_pack(conn, purchase_id)
        if row is None and pack is None:
            raise NotFound(f"no purchase {purchase_id} known here")
        out: dict[str, Any] = {"purchase_id": purchase_id}
        if row is not None:
            out.update(
                status=row["status"],
                buyer=row["buyer"],
                credits=row["credits"],
                amount_wei=int(row["amount_wei"]),
                expiry_block=row["expiry_block"],
                tx_hash=row["tx_hash"],
                detail=row["detail"],
                quote=json.loads(row["quote"]),
            )
        if pack is not None:
            out.update(status=repo.CERTIFIED, pack=pack_view(pack))
        return out


def pack_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "pack_id": row["pack_id"],
        "buyer": row["buyer"],
        "credits": row["credits"],
        "remaining_credits": row["remaining_credits"],
        "amount_wei": int(row["amount_wei"]),
        "tx_hash": row["tx_hash"],
        "block_number": row["block_number"],
        "chain_id": row["chain_id"],
        "certified_at": row["certified_at"],
        "certificate": json.loads(row["certificate"]),
    }
