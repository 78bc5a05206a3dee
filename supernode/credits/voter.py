"""Spending credits, the voter's side: vote for orders, apply certificates, catch up.

A member votes for an order only if it is the pack's next sequence, meets the pack rules
(pack_rules.check_order) and is within its time window; it writes its vote durably
(group-committed, synchronous=FULL) before answering, never votes for two orders at one
(pack, sequence), and asked again for the same order returns the same vote, whatever the
order's age (an order some member voted for must stay completable, or its sequence would
be locked for good). An expired order gets a first vote only from a member shown another
member's vote for it. Certificates (a quorum of votes) are applied to their pack strictly
in sequence order; a member behind fetches what it missed from a peer.

The peer RPCs of this side live here, both ends: ``rpc_spend_votes`` answers
``/p2p/spend_votes`` and ``VoteRequests.ask`` (the executor's) sends to it;
``rpc_spend_certificates`` answers ``/p2p/spend_certificates`` and ``catch_up`` calls it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import OrderedDict
from typing import Annotated, Any

from loguru import logger
from pydantic import Field

from supernode.config import Settings
from supernode.credits import pack_rules
from supernode.credits.orders import (
    NO_TIME_WINDOW,
    VOTE_KIND,
    Order,
    order_window,
    parse_order,
    reservation_id,
    verify_spend_certificate,
    vote_terms,
)
from supernode.crypto.attest import is_attestation
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope, Payload
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Refused, SupernodeError
from supernode.federation.gossip import Gossip
from supernode.federation.handlers import Checked
from supernode.federation.intake import Intake
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.peer_http import PeerError
from supernode.federation.rpc import BatchedCall, Outcome
from supernode.federation.signer import Signer
from supernode.ledger import spends as repo
from supernode.ledger.db import Ledger
from supernode.ledger.group_commit import GroupCommit

SPEND_CERTIFICATE = "spend_certificate"
VOTE_BATCH = "spend_vote_batch"  # transport type of a batch of vote requests
VOTE_BATCH_MAX = 256  # vote requests in one batch (a peer refuses more)
VOTES_IN_FLIGHT = 1  # vote batches in flight to one peer at once (1 measured best)
CATCH_UP_LIMIT = 500
VERIFIED_CERTS = 4_096  # certificates verified lately (one comes as a prior, then by gossip)
Prior = tuple[Order, dict[str, Any]]  # a checked certificate: its order, the certificate


class VoteBatchPayload(Payload):
    """`spend_vote_batch`: vote requests, each ``{"order", "prior", "votes"?}``."""

    items: Annotated[list[Any], Field(min_length=1, max_length=VOTE_BATCH_MAX)]


def certificate_row(order: Order, cert: dict[str, Any], received_at: float) -> dict[str, Any]:
    return {
        "pack_id": order.pack_id,
        "sequence": order.sequence,
        "order_id": order.id,
        "request_id": order.p.request_id,
        "executor": order.executor,
        "spender": order.sender,
        "amount": order.amount,
        "delegation_id": order.delegation_id,
        "certificate": canonical_json(cert),
        "received_at": received_at,
        "kind": order.kind,
        "delegate": order.delegation.payload["delegate"] if order.delegation else None,
        "expires_at": order.delegation.expires_at if order.delegation else None,
    }


def store_certificates(conn: sqlite3.Connection, certs: list[Prior], received_at: float) -> None:
    """Store certificates and apply what is ready, in one transaction."""
    packs: set[str] = set()
    for order, cert in sorted(certs, key=lambda oc: oc[0].sequence):
        if repo.add_certificate(conn, certificate_row(order, cert, received_at)) == "new":
            packs.add(order.pack_id)
    for pack_id in packs:
        repo.apply_ready(conn, pack_id)


class VoteRequests:
    """The executor's end of ``/p2p/spend_votes``: vote requests to each peer, batched
    (requests that queue while earlier ones are in flight travel together)."""

    def __init__(self, identity: Identity, network: NetworkFile, gossip: Gossip, timeout_s: float):
        self.identity = identity
        self.network = network
        self.gossip = gossip
        self.timeout_s = timeout_s
        self._callers: dict[str, BatchedCall] = {}  # per peer

    def reaches(self, address: str) -> bool:
        return address in self.gossip.links

    def ask(self, address: str, item: dict[str, Any], linger_s: float) -> asyncio.Future[Outcome]:
        caller = self._callers.get(address)
        if caller is None:
            caller = self._callers[address] = BatchedCall(
                self.gossip.links[address],
                self.identity,
                self.network,
                path="/p2p/spend_votes",
                type_=VOTE_BATCH,
                batch_max=VOTE_BATCH_MAX,
                in_flight=VOTES_IN_FLIGHT,
                timeout_s=self.timeout_s,
            )
        return caller.call(item, linger_s)

    def __len__(self) -> int:
        return len(self._callers)

    def sent(self) -> dict[str, tuple[int, int]]:
        """Per peer: vote-request batches sent, and the requests they carried."""
        return {a: (c.batches, c.items) for a, c in self._callers.items()}

    async def stop(self) -> None:
        for caller in self._callers.values():
            await caller.stop()


class Voter:
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
    ) -> None:
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.membership = membership
        self.intake = intake
        self.gossip = gossip
        self.signer = Signer(identity, network, settings.envelope_ttl_s)
        # a vote request: the order; the pack's previous certificate (checked) if the
        # request brought one, stored in the vote's own transaction; and whether an expired
        # order may get our first vote (another member's vote for it was shown)
        self.votes: GroupCommit[tuple[Order, Prior | None, bool], Any] = GroupCommit(
            db,
            self._vote_batch,
            records=lambda _items: (repo.VOTES, repo.CERTIFICATES),
            max_weight=500,
            name="votes",
        )
        # canonical bytes of a certificate -> (order, terms, eligible, quorum) it passed with
        self._verified: OrderedDict[bytes, tuple[Order, dict[str, Any], list[str], int]] = (
            OrderedDict()
        )

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {"spend_verified_certificates": len(self._verified)}

    def start(self) -> None:
        self.votes.start()

    async def stop(self) -> None:
        await self.votes.stop()

    def parse(self, raw: Any) -> Order:
        """An order from outside: shape and signatures (its time window is the vote's
        business, see check)."""
        return parse_order(raw, self.network, clock_skew_s=NO_TIME_WINDOW, max_ttl_s=NO_TIME_WINDOW)

    def late(self, order: Order) -> str | None:
        """Why ``order`` may get no first vote now (see orders.order_window), or None."""
        return order_window(
            order,
            time.time(),
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
        )

    # -- voting -------------------------------------------------------------------------
    def check(
        self, conn: sqlite3.Connection, order: Order, expired_ok: bool = False
    ) -> dict[str, str] | None:
        """Our vote for ``order`` if we gave it already (whatever the time); None if we may
        vote for it now; Refused (with the reason) if we may not. A first vote needs the
        order (and its delegation) within their time window, but for an expired order when
        ``expired_ok`` (another member's vote for it was shown), and the pack rules."""
        mine = repo.vote_for(conn, order.pack_id, order.sequence)
        if mine is not None:
            if mine["order_id"] == order.id:
                return {"signer": self.me, "signature": mine["signature"]}
            raise Refused(
                f"already voted for order {mine['order_id']} at sequence {order.sequence}",
                reason="conflicting_order",
            )
        late = self.late(order)
        if late is not None and not (late == "order_expired" and expired_ok):
            raise Refused(f"{late}: no first vote for this order now", reason=late)
        pack = repo.pack_state(conn, order.pack_id)
        parent = revoked_at = None
        if pack is not None and pack.get("parent_pack_id") is not None:
            parent = repo.pack_state(conn, pack["parent_pack_id"])
            revoked_at = repo.revoked_at(conn, pack["delegation_id"])
        reserved = False
        if order.delegation is not None:
            child = reservation_id(order.pack_id, order.delegation.id)
            reserved = repo.pack_state(conn, child) is not None
        pack_rules.check_order(order, pack, parent=parent, revoked_at=revoked_at, reserved=reserved)
        return None

    def _vote_batch(
        self, conn: sqlite3.Connection, items: list[tuple[Order, Prior | None, bool]]
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

    def _vote_one(self, conn: sqlite3.Connection, order: Order, expired_ok: bool) -> dict[str, str]:
        given = self.check(conn, order, expired_ok)
        if given is not None:
            return given
        vote = self.signer.attest(VOTE_KIND, vote_terms(order))
        repo.add_vote(
            conn,
            {
                "pack_id": order.pack_id,
                "sequence": order.sequence,
                "order_id": order.id,
                "amount": order.amount,
                "executor": order.executor,
                "signature": vote["signature"],
                "voted_at": time.time(),
            },
        )
        return vote

    async def vote(
        self, order: Order, prior: Prior | None = None, expired_ok: bool = False
    ) -> dict[str, str]:
        """Our vote for ``order`` (durable before it returns), or Refused with the reason;
        ``prior``, the pack's certificate before it (checked), is stored first."""
        result = await self.votes.submit((order, prior, expired_ok))
        if isinstance(result, Exception):
            raise result
        return result

    # -- the peer side of /p2p/spend_votes ----------------------------------------------
    async def rpc_spend_votes(self, raw: Any) -> dict[str, Any]:
        """A member's batch of vote requests (/p2p/spend_votes): one result per item,
        ``{"ok": vote}`` or ``{"error": {status, reason, detail}}``. The votes of one batch
        share one durable commit."""
        env, p = self.intake.open_transport(raw, VOTE_BATCH, VoteBatchPayload)
        return {"results": await asyncio.gather(*(self._answer(env.sender, i) for i in p.items))}

    async def _answer(self, asker: str, item: Any) -> dict[str, Any]:
        try:
            return {"ok": await self._vote_for_peer(asker, item)}
        except SupernodeError as exc:
            return {"error": {"status": exc.status, "reason": exc.reason, "detail": exc.detail}}

    async def _vote_for_peer(self, asker: str, item: Any) -> dict[str, str]:
        """Member ``asker`` (the order's executor, or any member a client resent the order
        to) asks for our vote on ``item["order"]``. The request carries the pack's previous
        certificate (``item["prior"]``): checked (once: gossip usually brought it already)
        and stored in the vote's own transaction, so a voter that gossip has not reached
        yet needs no second write; further behind, we fetch what we missed from the asker
        (bounded). ``item["votes"]``, other members' votes for the order, lets an expired
        order that some member voted for in time get ours too."""
        if not isinstance(item, dict) or not set(item) <= {"order", "prior", "votes"}:
            raise BadRequest("a vote request is an object {order, prior, votes?}")
        order = self.parse(item.get("order"))
        prior = self._prior(order, item.get("prior"), asker)
        expired_ok = "votes" in item and self._others_voted(order, item["votes"])
        try:
            return await self.vote(order, prior, expired_ok)
        except Refused as exc:
            if exc.reason != "sequence_ahead":
                raise
        await self.catch_up(order.pack_id, asker)
        return await self.vote(order, None, expired_ok)

    def _others_voted(self, order: Order, votes: Any) -> bool:
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

    def _prior(self, order: Order, raw: Any, asker: str) -> Prior | None:
        """The certificate right before ``order`` in its pack, checked; None if absent,
        not that one, or refused (logged: the vote then goes on without it)."""
        if raw is None:
            return None
        try:
            prior_order, _ = self.verify(raw)
        except SupernodeError as exc:
            logger.warning("prior certificate from {} refused: {}", asker, exc)
            return None
        if order.sequence == 0:  # a reservation's pack: the reservation that makes it
            d = prior_order.delegation
            if d is None or reservation_id(prior_order.pack_id, d.id) != order.pack_id:
                return None
            return prior_order, raw
        if prior_order.pack_id != order.pack_id or prior_order.sequence != order.sequence - 1:
            return None
        return prior_order, raw

    def reservation_certificate(self, pack_id: str) -> dict[str, Any] | None:
        """The certificate of the reservation that made reservation pack ``pack_id``, or
        None (not a reservation's pack, or not here)."""
        with self.db.read() as conn:
            pack = repo.pack_state(conn, pack_id)
            if pack is None or pack.get("delegation_id") is None:
                return None
            row = repo.reservation_certificate(conn, pack["delegation_id"])
        return json.loads(row["certificate"]) if row else None

    # -- certificates -------------------------------------------------------------------
    def verify(self, cert: Any) -> tuple[Order, dict[str, Any]]:
        """Check a certificate. A voter usually meets each one twice (inside the next
        order's vote request, then by gossip): the second time, the same bytes under the
        same members and quorum pass without checking every signature again."""
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        key = canonical_json(cert)  # a CanonicalError (400) if it is not plain JSON
        hit = self._verified.get(key)
        if hit is not None and hit[2] == eligible and hit[3] == q:
            return hit[0], hit[1]
        order, terms = verify_spend_certificate(cert, self.network, eligible, q)
        self._remember(key, order, terms, eligible, q or 0)
        return order, terms

    def remember(self, cert: dict[str, Any], order: Order, terms: dict[str, Any]) -> None:
        """A certificate made here from votes checked one by one: when it comes back (our
        own gossip, a peer's prior), it passes without its signatures checked again."""
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        self._remember(canonical_json(cert), order, terms, eligible, q or 0)

    def _remember(
        self, key: bytes, order: Order, terms: dict[str, Any], eligible: list[str], q: int
    ) -> None:
        self._verified[key] = (order, terms, eligible, q)
        while len(self._verified) > VERIFIED_CERTS:
            self._verified.popitem(last=False)

    async def apply_certificates(self, certs: list[Any]) -> None:
        checked = [(self.verify(c)[0], c) for c in certs]
        async with self.db.write(repo.CERTIFICATES) as conn:
            store_certificates(conn, checked, time.time())

    def certificates(self, pack_id: str, from_sequence: int, limit: int) -> list[Any]:
        """The pack's certificates from ``from_sequence`` on, in sequence order: what
        ``/p2p/spend_certificates`` answers a member catching up (and users read)."""
        with self.db.read() as conn:
            rows = repo.certificates_from(conn, pack_id, from_sequence, limit)
        return [json.loads(r["certificate"]) for r in rows]

    rpc_spend_certificates = certificates

    async def catch_up(self, pack_id: str, source: str) -> int:
        """Fetch the certificates of ``pack_id`` we have not applied from member
        ``source`` (its rpc_spend_certificates)."""
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


class SpendCertificateHandler:
    """Gossip type `spend_certificate`: checked by every member, applied in order."""

    type = SPEND_CERTIFICATE
    record = repo.CERTIFICATES

    def __init__(self, voter: Voter) -> None:
        self.voter = voter

    def validate(self, env: Envelope) -> Order:
        """The certificate's order; raises what the check found (its verdict for the
        peer: errors.TABLE)."""
        return self.voter.verify(env.payload)[0]

    def store(self, conn: sqlite3.Connection, items: list[Checked], received_at: float) -> None:
        # validate() verified each one before it was queued and parsed its order
        store_certificates(conn, [(c.parsed, c.env.payload) for c in items], received_at)
