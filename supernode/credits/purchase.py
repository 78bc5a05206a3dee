"""The credit-pack purchase, the seller's side (docs/protocols.md).

Quote: the supernode the buyer asks prices the request and gets a quorum of witnesses
to agree (each recomputes the price: credits/witness.py). Confirm: every witness checks
the payment on chain itself, binds the transaction to the purchase durably, then attests
the pack; a quorum of those attestations is the certificate, gossiped to all.
Everything is idempotent by purchase id and transaction hash, so the buyer may retry
anywhere; a purchase waiting for confirmations or witnesses is finished by a job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from supernode.chain.client import ChainClient, ChainError
from supernode.chain.payments import PENDING, REFUSED
from supernode.config import Settings
from supernode.credits.terms import (
    check_tx_hash,
    pack_terms,
    purchase_id_for,
    quote_terms,
    verify_quote,
)
from supernode.credits.witness import Witness
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Conflict, NotFound, Refused, Unavailable
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.signer import Signer
from supernode.ledger import credits as repo
from supernode.ledger.db import Ledger
from supernode.locks import KeyedLock

QUOTE_ENVELOPE = "credit_pack_quote"
CERTIFICATE_ENVELOPE = "credit_pack_certificate"
PENDING_BATCH = 50


class Seller:
    """The supernode a buyer talks to: it quotes, and once paid gathers the witnesses'
    attestations into the pack's certificate (its own attestation among them)."""

    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        db: Ledger,
        chain: ChainClient,
        membership: Membership,
        witness: Witness,
        publish: Callable[[Envelope], Awaitable[Any]],
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.chain = chain
        self.membership = membership
        self.witness = witness
        self.publish = publish
        # one certification attempt per purchase at a time (confirms and the job)
        self._certifying = KeyedLock()
        self.signer = Signer(identity, network, settings.envelope_ttl_s)

    async def quote(self, raw_request: Any) -> dict[str, Any]:
        """Price the buyer's request and get a quorum to agree; idempotent per request."""
        request = self.witness.check_request(raw_request)
        purchase_id = purchase_id_for(request.id)
        with self.db.read() as conn:
            known = repo.get_purchase(conn, purchase_id)
        if known is not None:
            return json.loads(known["quote"])
        latest = await self.witness.latest_block()
        terms = quote_terms(
            request, self.network, expiry_block=latest + self.s.quote_ttl_blocks, quoted_by=self.me
        )
        await self._check_funds(request.sender, terms["amount_wei"])
        agreements, q, why = await self.witness.agreements(request, terms)
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
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
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
        verdict = await self.witness.check_payment(terms, tx)
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
        await self.witness.bind(terms, tx)
        sigs, q, why = await self.witness.attestations(signed_quote, tx, pterms)
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
