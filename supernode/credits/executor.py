"""Spending credits, the executor's side: gather a quorum of votes for an order, build the
spend certificate and publish it.

The executor (the supernode a client sent the order to: the order's named executor, or
any member it resends to while that one is unreachable) votes itself, asks every other
eligible member at once (voter.VoteRequests) and stops at a quorum. A quorum of votes is
the certificate: gossiped (it may wait for the next push: the pack's next order carries
it to the voters anyway) and answered. With at most f faulty members, two quorums share
an honest voter, so no (pack, sequence) gets two certificates.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from supernode.config import Settings
from supernode.credits.orders import VOTE_KIND, Order, vote_terms
from supernode.credits.voter import SPEND_CERTIFICATE, Voter, VoteRequests
from supernode.crypto.envelope import Envelope
from supernode.crypto.keys import Identity
from supernode.errors import Refused, Unavailable
from supernode.federation.gossip import Gossip
from supernode.federation.membership import Membership
from supernode.federation.network import NetworkFile
from supernode.federation.rpc import PeerAnswers, gather_answers
from supernode.federation.signer import Signer

LAST_CERTS = 10_000  # packs whose last certificate made here is kept in memory


class Executor:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        membership: Membership,
        gossip: Gossip,
        voter: Voter,
        publish: Callable[..., Awaitable[Any]],
    ) -> None:
        self.me = identity.address
        self.network = network
        self.s = settings
        self.membership = membership
        self.voter = voter
        self.publish = publish
        self.signer = Signer(identity, network, settings.envelope_ttl_s)
        self.requests = VoteRequests(identity, network, gossip, settings.quorum_timeout_s)
        # the last certificate made here per pack: the next order's "prior", without a read
        self._last: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {"spend_last_certificates": len(self._last), "spend_vote_askers": len(self.requests)}

    async def stop(self) -> None:
        await self.requests.stop()

    async def certify(self, order: Order, linger_s: float = 0.0) -> dict[str, Any]:
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
        eligible, q = self.membership.eligible_members(), self.membership.quorum()
        if q is None:
            raise Unavailable("no eligible members known yet (is the chain reachable?)")
        item = {"order": order.to_wire(), "prior": self._prior_of(order)}
        if self.voter.late(order) != "order_expired":
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
        return await self._publish(order, votes)

    async def _publish(self, order: Order, votes: list[dict[str, str]]) -> dict[str, Any]:
        cert = {"order": order.to_wire(), "votes": votes}
        # made here from votes checked one by one: when it comes back, not checked again
        self.voter.remember(cert, order, vote_terms(order))
        env: Envelope = self.signer.sign(SPEND_CERTIFICATE, cert)
        # Not urgent: the next order of this pack carries it to the voters itself, so it may
        # linger for the next push (under load one push carries many).
        await self.publish([env], linger=True)
        self._last[order.pack_id] = cert
        self._last.move_to_end(order.pack_id)
        while len(self._last) > LAST_CERTS:
            self._last.popitem(last=False)
        return cert

    def _certified_already(self, order: Order) -> dict[str, Any] | None:
        """The certificate of ``order`` itself, if its sequence was certified for it."""
        found = self.voter.certificates(order.pack_id, order.sequence, 1)
        if found and found[0]["order"]["id"] == order.id:
            return found[0]
        return None

    def _prior_of(self, order: Order) -> dict[str, Any] | None:
        """The pack's certificate before ``order``, for voters gossip has not reached; for
        the first order of a reservation's pack, the reservation's certificate (which
        makes that pack)."""
        if order.sequence == 0:
            return self.voter.reservation_certificate(order.pack_id)
        prior = self._last.get(order.pack_id)
        if prior is None or prior["order"]["payload"]["sequence"] != order.sequence - 1:
            previous = self.voter.certificates(order.pack_id, order.sequence - 1, 1)
            prior = previous[0] if previous else None
        return prior

    async def _collect(
        self,
        order: Order,
        item: dict[str, Any],
        members: list[str],
        need: int,
        linger_s: float,
    ) -> tuple[list[dict[str, str]], PeerAnswers]:
        """Votes for ``order`` from ``members`` (ours included if we are one), until
        ``need`` of them voted, all answered, or the quorum timeout passed."""
        expired_ok = "votes" in item
        mine = self.me in members
        if mine and not expired_ok:  # checked first (a read): refused without asking anyone
            with self.voter.db.read() as conn:
                try:
                    self.voter.check(conn, order)
                except Refused as exc:
                    if exc.reason != "order_expired":
                        raise
        asking = gather_answers(
            {
                a: self.requests.ask(a, item, linger_s)
                for a in members
                if a != self.me and self.requests.reaches(a)
            },
            need=need - mine,
            timeout_s=self.s.quorum_timeout_s,
        )
        votes: list[dict[str, str]] = []
        if mine:  # our durable vote is written while the peers write theirs
            own, answers = await asyncio.gather(
                self.voter.vote(order, None, expired_ok), asking, return_exceptions=True
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
        votes += answers.attestations(VOTE_KIND, vote_terms(order), self.network, eligible)
        return votes, answers
