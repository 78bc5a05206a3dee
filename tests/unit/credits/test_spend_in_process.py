"""The spend protocol in one process (tests/inprocess.py): four real nodes, their peer
calls in-process. A 4-voter spend, a Byzantine voter and a catch-up, each in well under a
second here (the real-process tests keep SIGKILL, fsync and the chain). Speed is the
benchmarks' business: nothing here is timed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from supernode.credits.orders import (
    VOTE_KIND,
    parse_certified_order,
    verify_spend_certificate,
    vote_terms,
)
from supernode.crypto.attest import attest
from supernode.crypto.keys import Identity
from supernode.errors import Refused
from supernode.federation.transport import sign_transport
from tests.inprocess import CHAIN_ID, NETWORK_ID, Federation, federation


async def settled(fed: Federation, pack_id: str, want: tuple[int, int], timeout_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        states = [fed.state(i, pack_id) for i in range(len(fed.nodes))]
        if all(s == want for s in states) or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.01)


async def test_a_four_voter_spend_is_certified_and_applied_everywhere(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        owner = Identity.generate()
        pack_id = await fed.add_pack(owner, 100)
        executor = fed.nodes[0]
        cert = await executor.executor.certify(
            executor.voter.parse(fed.order(owner, pack_id, 0, 7))
        )
        assert len(cert["votes"]) >= 3
        assert await settled(fed, pack_id, (1, 93)) == [(1, 93)] * 4


async def ask(fed: Federation, asker: Identity, target: int, order: dict, prior=None) -> dict:
    """``asker`` (a member's key) asks member ``target`` for its vote, as the executor."""
    body = sign_transport(
        asker,
        fed.network,
        "spend_vote_batch",
        fed.keys[target].address,
        {"items": [{"order": order, "prior": prior}]},
    )
    (result,) = (await fed.nodes[target].voter.rpc_spend_votes(orjson.loads(body)))["results"]
    return result


async def test_a_byzantine_voter_cannot_make_two_certificates(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        owner, evil = Identity.generate(), fed.keys[3]  # member 3's key acts Byzantine
        pack_id = await fed.add_pack(owner, 100)
        o1 = fed.order(owner, pack_id, 0, 5, executor=3)
        o2 = fed.order(owner, pack_id, 0, 9, executor=3)

        def own_vote(order: dict) -> dict:
            terms = vote_terms(parse_certified_order(order, fed.network))
            return attest(evil, VOTE_KIND, terms, chain_id=CHAIN_ID, network_id=NETWORK_ID)

        first = [await ask(fed, evil, i, o1) for i in range(3)]  # every honest member votes for o1
        second = [
            await ask(fed, evil, i, o2) for i in range(3)
        ]  # ...and refuses o2 at that sequence
        assert all("ok" in r for r in first), first
        assert all(r["error"]["reason"] == "conflicting_order" for r in second), second
        eligible = [k.address for k in fed.keys]
        # o2 has only the Byzantine member's own vote: no certificate, whatever it signs
        votes2 = [own_vote(o2)]
        with pytest.raises(Refused):
            verify_spend_certificate({"order": o2, "votes": votes2}, fed.network, eligible, 3)
        votes1 = [r["ok"] for r in first]
        order1, _ = verify_spend_certificate(
            {"order": o1, "votes": votes1}, fed.network, eligible, 3
        )
        assert order1.amount == 5


async def test_a_member_that_missed_spends_catches_up_when_asked_to_vote(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        owner = Identity.generate()
        pack_id = await fed.add_pack(owner, 100)
        executor = fed.nodes[0]
        behind = fed.network.members[3].url
        fed.peers.down.add(behind)  # member 3 misses three spends (3 of 4 still a quorum)
        for seq in range(3):
            order = executor.voter.parse(fed.order(owner, pack_id, seq, 10))
            await executor.executor.certify(order)
        assert fed.state(3, pack_id) == (0, 100)
        fed.peers.down.discard(behind)
        # the next order's vote request reaches it: it catches up from the asker, votes
        fourth = executor.voter.parse(fed.order(owner, pack_id, 3, 10))
        result = await ask(fed, fed.keys[0], 3, fourth.to_wire())
        assert "ok" in result, result
        assert fed.state(3, pack_id) == (3, 70)  # the three it missed, applied in order
