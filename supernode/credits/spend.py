"""Spending credits (design.md §8.2–8.4): votes, certificates, application, catch-up.

The executor asks every eligible member to vote for the owner's signed order. A member
votes only if the order is the pack's next sequence and fits the remaining credits, and
writes its vote durably (group-committed, synchronous=FULL) before answering; it never
votes for two orders at one (pack, sequence), and asked again for the same order it
returns the same vote. A quorum of votes is the certificate; it is gossiped and every
member applies certificates to the pack strictly in sequence order. With at most f faulty
members, two quorums share an honest voter, so no (pack, sequence) gets two certificates.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from loguru import logger
from pydantic import Field

from supernode.config import Settings
from supernode.credits.spend_terms import (
    NO_TIME_WINDOW,
    VOTE_KIND,
    check_against_pack,
    delegation_id,
    order_window,
    parse_order,
    verify_spend_certificate,
    vote_terms,
)
from supernode.crypto.attest import is_attestation
from supernode.crypto.canonical import CanonicalError, canonical_json
from supernode.crypto.envelope import Envelope, Payload
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Refused, SupernodeError, Unavailable
from supernode.federation.gossip import Gossip
from supernode.federation.intake import Intake
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.peer_http import PeerError
from supernode.federation.rpc import BatchedCall, PeerAnswers, gather_answers
from supernode.federation.signer import Signer
from supernode.ledger import spends as repo
from supernode.ledger.db import Ledger
from supernode.ledger.group_commit import GroupCommit

SPEND_CERTIFICATE = "spend_certificate"
VOTE_BATCH = "spend_vote_batch"  # transport type of a batch of vote requests
VOTE_BATCH_MAX = 256  # vote requests in one batch (a peer refuses more)
VOTES_IN_FLIGHT = 1  # vote batches in flight to one peer at once (1 measured best)
CATCH_UP_LIMIT = 500
Prior = tuple[Envelope, dict[str, Any]]  # a checked certificate: its order, the certificate
LAST_CERTS = 10_000  # packs whose last certificate made here is kept in memory
VERIFIED_CERTS = 4_096  # certificates verified lately (one comes as a prior, then by gossip)


class VoteBatchPayload(Payload):
    """`spend_vote_batch`: vote requests, each ``{"order", "prior", "votes"?}``."""

    items: Annotated[list[Any], Field(min_length=1, max_length=VOTE_BATCH_MAX)]


def certificate_row(order: Envelope, cert: dict[str, Any], received_at: float) -> dict[str, Any]:
    p = order.payload
    return {
        "pack_id": p["pack_id"],
        "sequence": p["sequence"],
        "order_id": order.id,
        "request_id": p["request_id"],
        "executor": p["executor"],
        "spender": order.sender,
        "amount": p["amount"],
        "delegation_id": delegation_id(order),
        "certificate": canonical_json(cert),
        "received_at": received_at,
    }


def store_certificates(
    conn: sqlite3.Connection, certs: list[tuple[Envelope, dict[str, Any]]], received_at: float
) -> None:
    """Store certificates and apply what is ready, in one transaction."""
    packs: set[str] = set()
    for order, cert in sorted(certs, key=lambda oc: oc[0].payload["sequence"]):
        if repo.add_certificate(conn, certificate_row(order, cert, received_at)) == "new":
            packs.add(order.payload["pack_id"])
    for pack_id in packs:
        repo.apply_ready(conn, pack_id)


class SpendService:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        db: Ledger,
        membership: Membership,
        intake: Intake,
        gossip: Gossip,
        publish: Callable[..., Awaitable[Any]],
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.membership = membership
        self.intake = intake
        self.gossip = gossip
        self.publish = publish
        # a vote request: the order; the pack's previous certificate (checked) if the
        # request brought one, stored in the vote's own transaction; and whether an expired
        # order may get our first vote (another member's vote for it was shown)
        self.votes: GroupCommit[tuple[Envelope, Prior | None, bool], Any] = GroupCommit(
            db,
            self._vote_batch,
            records=lambda _items: (repo.VOTES, repo.CERTIFICATES),
            max_weight=500,
            name="votes",
        )
        self.signer = Signer(identity, network, settings.envelope_ttl_s)
        self.askers: dict[str, BatchedCall] = {}  # per peer: batched vote requests
        # the last certificate made here per pack: the next order's "prior", without a read
        self._last: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # canonical bytes of a certificate -> (order, terms, eligible, quorum) it passed with
        self._verified: OrderedDict[bytes, tuple[Envelope, dict[str, Any], list[str], int]] = (
            OrderedDict()
        )
        self._built: set[str] = set()  # ids of certificate envelopes being published here

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {
            "spend_last_certificates": len(self._last),
            "spend_verified_certificates": len(self._verified),
            "spend_vote_askers": len(self.askers),
        }

    def start(self) -> None:
        self.votes.start()

    async def stop(self) -> None:
        for asker in self.askers.values():
            await asker.stop()
        await self.votes.stop()

    # -- voting -------------------------------------------------------------------------
    def _vote_batch(
        self, conn: sqlite3.Connection, items: list[tuple[Envelope, Prior | None, bool]]
    ) -> list[Any]:
        """One durable transaction for a batch of vote requests, each checked in turn
        (after storing the certificate it brought, if we lacked it)."""
        out: list[Any] = []
        now = time.time()
        for order, prior, expired_ok in items:
            try:
                if prior is not None:
                    store_certificates(conn, [prior], now)
                out.append(self._vote_one(conn, order, expired_ok))
            except Refused as exc:
                out.append(exc)
        return out

    def _check_vote(
        self, conn: sqlite3.Connection, order: Envelope, expired_ok: bool = False
    ) -> dict[str, str] | None:
        """Our vote for ``order`` if we gave it already (whatever the time: an order some
        member voted for must stay completable, or its sequence would be locked for good);
        None if we may vote for it now; Refused (with the reason) if we may not. A first
        vote needs the order (and its delegation) within their time window, but for an
        expired order when ``expired_ok`` (another member's vote for it was shown)."""
        p = order.payload
        mine = repo.vote_for(conn, p["pack_id"], p["sequence"])
        if mine is not None:
            if mine["order_id"] == order.id:
                return {"signer": self.me, "signature": mine["signature"]}
            raise Refused(
                f"already voted for order {mine['order_id']} at sequence {p['sequence']}",
                reason="conflicting_order",
            )
        late = self._late(order)
        if late is not None and not (late == "order_expired" and expired_ok):
            raise Refused(f"{late}: no first vote for this order now", reason=late)
        did = delegation_id(order)
        spent = repo.delegated_spent(conn, did) if did else 0
        check_against_pack(order, repo.pack_state(conn, p["pack_id"]), spent)
        return None

    def _late(self, order: Envelope) -> str | None:
        return order_window(
            order,
            time.time(),
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
        )

    def _vote_one(
        self, conn: sqlite3.Connection, order: Envelope, expired_ok: bool
    ) -> dict[str, str]:
        p = order.payload
        given = self._check_vote(conn, order, expired_ok)
        if given is not None:
            return given
        vote = self.signer.attest(VOTE_KIND, vote_terms(order))
        repo.add_vote(
            conn,
            {
                "pack_id": p["pack_id"],
                "sequence": p["sequence"],
                "order_id": order.id,
                "amount": p["amount"],
                "executor": p["executor"],
                "signature": vote["signature"],
                "voted_at": time.time(),
            },
        )
        return vote

    async def vote(
        self, order: Envelope, prior: Prior | None = None, expired_ok: bool = False
    ) -> dict[str, str]:
        """Our vote for ``order`` (durable before it returns), or Refused with the reason;
        ``prior``, the pack's certificate before it (checked), is stored first."""
        result = await self.votes.submit((order, prior, expired_ok))
        if isinstance(result, Exception):
            raise result
        return result

    def _parse(self, raw: Any) -> Envelope:
        """Schema and signatures; the time window is the vote's business (_check_vote)."""
        return parse_order(raw, self.network, clock_skew_s=NO_TIME_WINDOW, max_ttl_s=NO_TIME_WINDOW)

    def _others_voted(self, order: Envelope, votes: Any) -> bool:
        """``votes`` holds a valid vote for ``order`` by another eligible member."""
        if not isinstance(votes, list):
            return False
        terms, eligible = vote_terms(order), self.membership.eligible_members()
        return any(
            isinstance(v, dict)
            and v.get("signer") != self.me
            and is_attestation(
                VOTE_KIND,
                terms,
                v,
                chain_id=self.network.chain_id,
                network_id=self.network.network_id,
                eligible=eligible,
            )
            for v in votes[: len(eligible)]
        )

    async def rpc_spend_votes(self, raw: Any) -> dict[str, Any]:
        """A member's batch of vote requests (/p2p/spend_votes): one result per item,
        ``{"ok": vote}`` or ``{"error": {status, reason, detail}}``. The votes of one batch
        share one durable commit."""
        env, p = self.intake.open_transport(raw, VOTE_BATCH, VoteBatchPayload)
        return {"results": await asyncio.gather(*(self._answer(env.sender, i) for i in p.items))}

    async def _answer(self, executor: str, item: Any) -> dict[str, Any]:
        try:
            return {"ok": await self.vote_for_peer(executor, item)}
        except SupernodeError as exc:
            return {"error": {"status": exc.status, "reason": exc.reason, "detail": exc.detail}}

    async def vote_for_peer(self, asker: str, item: Any) -> dict[str, str]:
        """Member ``asker`` (the order's executor, or any member a client resent the order
        to) asks for our vote on ``item["order"]``. The request carries the pack's previous
        certificate (``item["prior"]``): checked (once: gossip usually brought it already)
        and stored in the vote's own transaction, so a voter that gossip has not reached
        yet needs no second write; further behind, we fetch what we missed from the asker
        (bounded). ``item["votes"]``, other members' votes for the order, lets an expired
        order that some member voted for in time get ours too."""
        if not isinstance(item, dict) or not set(item) <= {"order", "prior", "votes"}:
            raise BadRequest("a vote request is an object {order, prior, votes?}")
        order = self._parse(item.get("order"))
        prior = self._prior(order, item.get("prior"), asker)
        expired_ok = "votes" in item and self._others_voted(order, item["votes"])
        try:
            return await self.vote(order, prior, expired_ok)
        except Refused as exc:
            if exc.reason != "sequence_ahead":
                raise
        await self.catch_up(order.payload["pack_id"], asker)
        return await self.vote(order, None, expired_ok)

    def _prior(self, order: Envelope, raw: Any, executor: str) -> Prior | None:
        """The certificate right before ``order`` in its pack, checked; None if absent,
        not that one, or refused (logged: the vote then goes on without it)."""
        if raw is None or order.payload["sequence"] == 0:
            return None
        try:
            prior_order, _ = self.verify(raw)
        except SupernodeError as exc:
            logger.warning("prior certificate from {} refused: {}", executor, exc)
            return None
        p, q = prior_order.payload, order.payload
        if p["pack_id"] != q["pack_id"] or p["sequence"] != q["sequence"] - 1:
            return None
        return prior_order, raw

    # -- certificates -----------------------------------------------------------------------
    def verify(self, cert: Any) -> tuple[Envelope, dict[str, Any]]:
        """Check a certificate. A voter usually meets each one twice (inside the next
        order's vote request, then by gossip): the second time, the same bytes under the
        same members and quorum pass without checking every signature again."""
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        try:
            key = canonical_json(cert)
        except CanonicalError as exc:
            raise BadRequest(f"a spend certificate must be plain JSON: {exc.detail}") from exc
        hit = self._verified.get(key)
        if hit is not None and hit[2] == eligible and hit[3] == q:
            return hit[0], hit[1]
        order, terms = verify_spend_certificate(cert, self.network, eligible, q)
        self._verified[key] = (order, terms, eligible, q or 0)
        while len(self._verified) > VERIFIED_CERTS:
            self._verified.popitem(last=False)
        return order, terms

    async def apply_certificates(self, certs: list[Any]) -> None:
        checked = [(self.verify(c)[0], c) for c in certs]
        async with self.db.write(repo.CERTIFICATES) as conn:
            store_certificates(conn, checked, time.time())

    async def catch_up(self, pack_id: str, source: str) -> int:
        """Fetch the certificates of ``pack_id`` we have not applied from member ``source``."""
        link = self.gossip.links.get(source)
        with self.db.read() as conn:
            pack = repo.pack_state(conn, pack_id)
        if link is None or pack is None:
            return 0
        try:
            resp = await link.client.get(
                f"{link.member.url}/p2p/spend_certificates",
                {
                    "pack_id": pack_id,
                    "from_sequence": pack["next_sequence"],
                    "limit": CATCH_UP_LIMIT,
                },
                timeout_s=self.s.quorum_timeout_s,
            )
            certs = resp.json()["certificates"] if resp.status == 200 else []
        except (PeerError, ValueError, KeyError, TypeError) as exc:
            logger.warning("catch-up of pack {} from {} failed: {!r}", pack_id, source, exc)
            return 0
        await self.apply_certificates(certs)
        logger.info("caught up pack {}: {} certificates from {}", pack_id, len(certs), source)
        return len(certs)

    async def certify(self, raw_order: Any, linger_s: float = 0.0) -> dict[str, Any]:
        """Our vote, then peers' until a quorum; gossip the certificate. Any member may do
        this for any order (a client resends an order wherever it can while its first
        supernode is unreachable); the certificate names the order's executor all the
        same. ``linger_s``: how long the vote requests may wait to share a batch (the
        caller has time: the model's answer will take longer).

        An order that expired before a quorum voted for it is finished if any member voted
        for it in time: every member is asked, and the votes found are shown to the others
        (who then vote for it too). If no member holds a vote for it and every member said
        so, it can never be certified: 422 ``order_expired`` (the client signs a new order
        for that sequence). Until every member has answered, 503 ``no_quorum``."""
        order = self._parse(raw_order)
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        if q is None:
            raise Unavailable("no eligible members known yet (is the chain reachable?)")
        item = {"order": order.to_wire(), "prior": self._prior_of(order)}
        if self._late(order) != "order_expired":
            try:
                votes, answers = await self._collect(order, item, eligible, q, linger_s)
            except Refused as exc:
                done = self._certified_already(order) if exc.reason == "stale_sequence" else None
                if done is None:
                    raise
                return done  # a resend of an order certified meanwhile
        else:  # first everyone, to find the votes given in time; then show them to the rest
            votes, answers = await self._collect(order, item, eligible, len(eligible), 0.0)
            if not votes and answers.all_refused(eligible, "order_expired"):
                raise Refused(
                    "the order expired and no member voted for it: it can never be "
                    "certified; sign a new order for this sequence",
                    reason="order_expired",
                )
            if votes and len(votes) < q:
                rest = [a for a in eligible if a not in {v["signer"] for v in votes}]
                more, answers = await self._collect(
                    order, {**item, "votes": votes}, rest, q - len(votes), 0.0
                )
                votes += more
        if len(votes) < q:
            raise Unavailable(
                f"spend voted by {len(votes)} of the {q} members needed; {answers.summary()}",
                reason="no_quorum",
            )
        cert = {"order": order.to_wire(), "votes": votes}
        env = self.signer.sign(SPEND_CERTIFICATE, cert)
        self._built.add(env.id)  # made here from votes checked above: not verified again
        try:
            # Not urgent: the next order of this pack carries it to the voters itself, so it
            # may linger for the next push (under load one push carries many).
            await self.publish([env], linger=True)
        finally:
            self._built.discard(env.id)
        self._last[order.payload["pack_id"]] = cert
        self._last.move_to_end(order.payload["pack_id"])
        while len(self._last) > LAST_CERTS:
            self._last.popitem(last=False)
        return cert

    def _certified_already(self, order: Envelope) -> dict[str, Any] | None:
        """The certificate of ``order`` itself, if its sequence was certified for it."""
        found = self.certificates(order.payload["pack_id"], order.payload["sequence"], 1)
        if found and found[0]["order"]["id"] == order.id:
            return found[0]
        return None

    def _prior_of(self, order: Envelope) -> dict[str, Any] | None:
        """The pack's certificate before ``order``, for voters gossip has not reached."""
        seq = order.payload["sequence"]
        if seq == 0:
            return None
        prior = self._last.get(order.payload["pack_id"])
        if prior is None or prior["order"]["payload"]["sequence"] != seq - 1:
            previous = self.certificates(order.payload["pack_id"], seq - 1, 1)
            prior = previous[0] if previous else None
        return prior

    async def _collect(
        self,
        order: Envelope,
        item: dict[str, Any],
        members: list[str],
        need: int,
        linger_s: float,
    ) -> tuple[list[dict[str, str]], PeerAnswers]:
        """Votes for ``order`` from ``members`` (ours included if we are one), until
        ``need`` of them voted, all answered, or the quorum timeout passed."""
        terms = vote_terms(order)
        expired_ok = "votes" in item
        mine = self.me in members
        if mine and not expired_ok:  # checked first (a read): refused without asking anyone
            with self.db.read() as conn:
                try:
                    self._check_vote(conn, order)
                except Refused as exc:
                    if exc.reason != "order_expired":
                        raise
        asking = gather_answers(
            {
                a: self._asker(a).call(item, linger_s)
                for a in members
                if a != self.me and a in self.gossip.links
            },
            need=need - mine,
            timeout_s=self.s.quorum_timeout_s,
        )
        votes: list[dict[str, str]] = []
        if mine:  # our durable vote is written while the peers write theirs
            own, answers = await asyncio.gather(
                self.vote(order, None, expired_ok), asking, return_exceptions=True
            )
            if isinstance(answers, BaseException):
                raise answers
            if isinstance(own, Refused) and own.reason == "order_expired":
                answers.refused[self.me] = f"HTTP 422: order_expired: {own.detail}"
            elif isinstance(own, BaseException):
                raise own
            else:
                votes.append(own)
        else:
            answers = await asking
        eligible = self.membership.eligible_members()
        votes += answers.attestations(VOTE_KIND, terms, self.network, eligible)
        return votes, answers

    def _asker(self, address: str) -> BatchedCall:
        asker = self.askers.get(address)
        if asker is None:
            asker = self.askers[address] = BatchedCall(
                self.gossip.links[address],
                self.identity,
                self.network,
                path="/p2p/spend_votes",
                type_=VOTE_BATCH,
                batch_max=VOTE_BATCH_MAX,
                in_flight=VOTES_IN_FLIGHT,
                timeout_s=self.s.quorum_timeout_s,
            )
        return asker

    def certificates(self, pack_id: str, from_sequence: int, limit: int) -> list[Any]:
        with self.db.read() as conn:
            rows = repo.certificates_from(conn, pack_id, from_sequence, limit)
        return [json.loads(r["certificate"]) for r in rows]


class SpendCertificateHandler:
    """Gossip type `spend_certificate`: checked by every member, applied in order."""

    type = SPEND_CERTIFICATE
    record = repo.CERTIFICATES

    def __init__(self, service: SpendService) -> None:
        self.service = service

    def validate(self, env: Envelope) -> None:
        """Raises what the check found (its verdict for the peer: errors.TABLE)."""
        if env.id in self.service._built:
            return  # this daemon's own, built from votes it verified one by one
        self.service.verify(env.payload)

    def store(self, conn: sqlite3.Connection, items: Any, received_at: float) -> None:
        # validate() verified each certificate before it was queued: parse, don't re-verify
        certs = [(Envelope.model_validate(c.env.payload["order"]), c.env.payload) for c in items]
        store_certificates(conn, certs, received_at)
