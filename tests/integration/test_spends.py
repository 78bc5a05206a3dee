"""Spending credits with real daemons: no double spend under races, a Byzantine voter,
a voter killed after voting, replays applied once, bad orders refused."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient
from supernode.crypto.attest import attest
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import LocalFederation
from supernode.federation.transport import batch_body, sign_transport
from tests.conftest import TEST_SETTINGS, buy_pack, pack_state, wait_until

pytestmark = pytest.mark.integration
SETTINGS = {**TEST_SETTINGS, "SUPERNODE_QUORUM_TIMEOUT_S": "3"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("spends"), peers=4, settings=dict(SETTINGS)
    ) as f:
        yield f


@pytest.fixture(scope="module")
def byz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Three daemons and a fourth eligible member whose key the test holds."""
    with LocalFederation(
        root=tmp_path_factory.mktemp("byzantine"), peers=3, extra_members=1, settings=dict(SETTINGS)
    ) as f:
        yield f


def certs_at(fed: LocalFederation, i: int, pack_id: str) -> list[dict[str, Any]]:
    with SupernodeClient(fed.daemons[i].url) as c:
        return c.pack_spends(pack_id)


def order(
    fed: LocalFederation, owner: Identity, pack_id: str, seq: int, amount: int, executor: str
) -> dict[str, Any]:
    net = fed.network
    assert net is not None
    return sign_envelope(
        owner,
        type_="spend_order",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={
            "pack_id": pack_id,
            "sequence": seq,
            "amount": amount,
            "request_id": "0x" + secrets.token_hex(32),
            "executor": executor,
        },
    ).to_wire()


def assert_no_double_spend(fed: LocalFederation, pack_id: str, credits: int) -> int:
    """Every daemon: one certificate per sequence, the same ones, within the pack."""
    per_daemon = []
    for i in range(len(fed.daemons)):
        certs = certs_at(fed, i, pack_id)
        seqs = [c["order"]["payload"]["sequence"] for c in certs]
        assert len(seqs) == len(set(seqs)), f"daemon {i} holds two certificates for a sequence"
        per_daemon.append({c["order"]["payload"]["sequence"]: c["order"]["id"] for c in certs})
        total = sum(c["order"]["payload"]["amount"] for c in certs)
        assert total <= credits
        st = pack_state(fed, i, pack_id)
        assert st is not None and st["remaining_credits"] == credits - total
    # the same order holds each sequence everywhere
    merged: dict[int, str] = {}
    for d in per_daemon:
        for seq, oid in d.items():
            assert merged.setdefault(seq, oid) == oid, f"sequence {seq} certified twice"
    return sum(1 for _ in merged)


def test_racing_orders_through_two_supernodes_never_overspend(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 100)
    a, b = fed.daemons[0], fed.daemons[1]
    # 50 orders of 10 credits for sequences 0..49 (500 credits against 100), half executed
    # by A and half by B, sent at once; a client retries what failed, a bounded number of
    # times, as a real one would.
    orders = [
        order(fed, owner, pack_id, s, 10, (a if s % 2 == 0 else b).address) for s in range(50)
    ]
    outcome: dict[int, Any] = {}

    def run(seqs: list[int], url: str) -> None:
        with SupernodeClient(url) as c:
            for _ in range(30):
                pending = [s for s in seqs if s not in outcome]
                if not pending:
                    return
                for s in pending:
                    try:
                        outcome[s] = c.submit_spend(orders[s])
                    except SupernodeAPIError as exc:
                        reason = exc.body.get("reason") if isinstance(exc.body, dict) else None
                        if reason in ("insufficient_credits", "stale_sequence"):
                            outcome[s] = exc
                time.sleep(0.05)

    threads = [
        threading.Thread(target=run, args=(list(range(0, 50, 2)), a.url)),
        threading.Thread(target=run, args=(list(range(1, 50, 2)), b.url)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    certified = sorted(s for s, r in outcome.items() if isinstance(r, dict))
    assert certified == list(range(10)), certified
    wait_until(
        lambda: all(
            (pack_state(fed, i, pack_id) or {}).get("remaining_credits") == 0 for i in range(4)
        ),
        what="every daemon applied all ten",
    )
    assert assert_no_double_spend(fed, pack_id, 100) == 10
    # conflicting orders for one sequence at two supernodes at once: at most one wins
    owner2, pack2 = buy_pack(fed, 50)
    conflicting = [order(fed, owner2, pack2, 0, 50, d.address) for d in (a, b)]
    results: list[Any] = []

    def submit(o: dict[str, Any], url: str) -> None:
        with SupernodeClient(url) as c:
            try:
                results.append(c.submit_spend(o))
            except SupernodeAPIError as exc:
                results.append(exc)

    ts = [
        threading.Thread(target=submit, args=(o, d.url))
        for o, d in zip(conflicting, (a, b), strict=True)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert sum(1 for r in results if isinstance(r, dict)) <= 1
    time.sleep(1.0)  # let gossip settle
    assert assert_no_double_spend(fed, pack2, 50) <= 1


def test_replayed_order_and_certificate_apply_once(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 60)
    o = order(fed, owner, pack_id, 0, 25, fed.daemons[2].address)
    with SupernodeClient(fed.daemons[2].url) as c:
        cert = c.submit_spend(o)
        again = c.submit_spend(o)  # the same order: the same votes, nothing new applied
    assert again["order"]["id"] == cert["order"]["id"]
    net = fed.network
    assert net is not None
    pusher = fed.identity(3)
    env = sign_envelope(
        pusher,
        type_="spend_certificate",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload=cert,
    ).to_wire()
    for target in (0, 0, 1, 3):
        body = batch_body(
            pusher,
            net.network_id,
            net.chain_id,
            fed.daemons[target].address,
            [env["id"]],
            [canonical_json(env)],
        )
        r = httpx.post(
            f"{fed.daemons[target].url}/p2p/envelopes",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200 and not r.json()["rejected"]
    time.sleep(1.0)
    for i in range(4):
        st = pack_state(fed, i, pack_id)
        assert st is not None and st["remaining_credits"] == 35 and st["next_sequence"] == 1
        assert len(certs_at(fed, i, pack_id)) == 1


def test_bad_orders_refused_with_reasons_and_nothing_spent(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 30)
    d = fed.daemons[1]
    stranger = Identity.generate()
    cases = [
        (order(fed, stranger, pack_id, 0, 5, d.address), 422, "not_owner"),
        (order(fed, owner, pack_id, 0, 31, d.address), 422, "insufficient_credits"),
        (order(fed, owner, "0x" + "ab" * 32, 0, 5, d.address), 422, "unknown_pack"),
        (order(fed, owner, pack_id, 3, 5, d.address), 422, "sequence_ahead"),
        (
            {**order(fed, owner, pack_id, 0, 5, d.address), "signature": "0x"},
            422,
            "empty_signature",
        ),
    ]
    for o, status, reason in cases:
        r = httpx.post(f"{d.url}/spend_credits", json=o, timeout=15)
        assert r.status_code == status, (reason, r.text)
        if status == 422:
            assert r.json()["reason"] == reason, r.text
    bad = order(fed, owner, pack_id, 0, 5, d.address)
    bad["payload"]["amount"] = 0
    assert httpx.post(f"{d.url}/spend_credits", json=bad, timeout=10).status_code == 400
    assert httpx.post(f"{d.url}/spend_credits", content=b"{", timeout=10).status_code == 400
    for i in range(4):
        assert pack_state(fed, i, pack_id) == {
            "pack_id": pack_id,
            "buyer": owner.address,
            "credits": 30,
            "remaining_credits": 30,
            "next_sequence": 0,
        }


@dataclass
class VoteAnswer:
    status_code: int
    body: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return self.body


def vote_request(
    fed: LocalFederation,
    executor: Identity,
    target: int,
    o: dict[str, Any],
    prior: dict[str, Any] | None = None,
) -> VoteAnswer:
    """Ask daemon ``target`` for its vote on order ``o`` as ``executor`` (a batch of one),
    with the pack's previous certificate ``prior``."""
    net = fed.network
    assert net is not None
    body = sign_transport(
        executor,
        net,
        "spend_vote_batch",
        fed.daemons[target].address,
        {"items": [{"order": o, "prior": prior}]},
    )
    r = httpx.post(
        f"{fed.daemons[target].url}/p2p/spend_votes",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    if "ok" in result:
        return VoteAnswer(200, {"vote": result["ok"]})
    return VoteAnswer(result["error"]["status"], result["error"])


def evil_vote(fed: LocalFederation, evil: Identity, o: dict[str, Any]) -> dict[str, str]:
    """The vote of the member whose key the test holds."""
    from supernode.credits.orders import parse_certified_order, vote_terms

    net = fed.network
    assert net is not None
    return attest(
        evil,
        "spend_vote",
        vote_terms(parse_certified_order(o, net)),
        chain_id=net.chain_id,
        network_id=net.network_id,
    )


def test_byzantine_voter_cannot_make_two_certificates(byz: LocalFederation) -> None:
    net = byz.network
    assert net is not None
    owner, pack_id = buy_pack(byz, 40)
    evil = byz.identity(3)  # eligible member (collateral), no daemon: the test acts for it
    o1 = order(byz, owner, pack_id, 0, 40, evil.address)
    o2 = order(byz, owner, pack_id, 0, 40, evil.address)
    # honest daemons 0 and 1 vote for o1; daemon 2 for o2
    v1 = [vote_request(byz, evil, i, o1) for i in (0, 1)]
    v2 = [vote_request(byz, evil, 2, o2)]
    assert all(r.status_code == 200 for r in v1 + v2)
    # they refuse the other order for the same sequence
    for i, o in ((0, o2), (1, o2), (2, o1)):
        r = vote_request(byz, evil, i, o)
        assert r.status_code == 422 and r.json()["reason"] == "conflicting_order"
    # the Byzantine member signs both orders
    cert1 = {"order": o1, "votes": [r.json()["vote"] for r in v1] + [evil_vote(byz, evil, o1)]}
    cert2 = {"order": o2, "votes": [r.json()["vote"] for r in v2] + [evil_vote(byz, evil, o2)]}
    padded = {"order": o2, "votes": cert2["votes"] + [evil_vote(byz, evil, o2)]}  # twice
    for cert, reason in (
        (cert2, "too_few_signatures"),
        (padded, "duplicate_signer"),
        (cert1, None),
    ):
        env = sign_envelope(
            evil,
            type_="spend_certificate",
            network_id=net.network_id,
            chain_id=net.chain_id,
            payload=cert,
        ).to_wire()
        for i in range(3):
            body = batch_body(
                evil,
                net.network_id,
                net.chain_id,
                byz.daemons[i].address,
                [env["id"]],
                [canonical_json(env)],
            )
            r = httpx.post(
                f"{byz.daemons[i].url}/p2p/envelopes",
                content=body,
                headers={"content-type": "application/json"},
                timeout=10,
            )
            got = [x["reason"] for x in r.json()["rejected"]]
            assert got == ([reason] if reason else []), r.json()
    wait_until(
        lambda: all(
            (pack_state(byz, i, pack_id) or {}).get("remaining_credits") == 0 for i in range(3)
        ),
        what="cert1 applied everywhere",
    )
    for i in range(3):
        certs = certs_at(byz, i, pack_id)
        assert [c["order"]["id"] for c in certs] == [o1["id"]]


def test_a_voter_behind_applies_the_prior_certificate_with_its_vote(
    byz: LocalFederation,
) -> None:
    """A certificate gossip never carried reaches a voter inside the next order's vote
    request: a true one is applied with the vote; a forged one is not, and the vote waits."""
    owner, pack_id = buy_pack(byz, 30)
    evil = byz.identity(3)  # the executor: an eligible member with no daemon
    o0 = order(byz, owner, pack_id, 0, 10, evil.address)
    votes = [vote_request(byz, evil, i, o0).json()["vote"] for i in (0, 1)]
    cert0 = {"order": o0, "votes": [*votes, evil_vote(byz, evil, o0)]}  # nobody gossips it
    o1 = order(byz, owner, pack_id, 1, 10, evil.address)
    # daemon 2 never saw o0: a forged prior (one vote short of the quorum, or a vote for
    # another order) is refused and the order stays ahead of it
    short = {"order": o0, "votes": cert0["votes"][:2]}
    other = {"order": o0, "votes": [*votes, evil_vote(byz, evil, o1)]}
    for forged in (short, other):
        r = vote_request(byz, evil, 2, o1, prior=forged)
        assert r.status_code == 422 and r.json()["reason"] == "sequence_ahead", r.json()
    assert pack_state(byz, 2, pack_id)["next_sequence"] == 0  # type: ignore[index]
    # the true one: applied and voted on in one go
    r = vote_request(byz, evil, 2, o1, prior=cert0)
    assert r.status_code == 200, r.json()
    state = pack_state(byz, 2, pack_id)
    assert state is not None
    assert (state["next_sequence"], state["remaining_credits"]) == (1, 20)
    # asked again with the same prior: the same vote, nothing applied twice
    again = vote_request(byz, evil, 2, o1, prior=cert0)
    assert again.status_code == 200 and again.json()["vote"] == r.json()["vote"]
    assert pack_state(byz, 2, pack_id) == state


def test_voter_killed_after_voting_still_refuses_a_conflict(byz: LocalFederation) -> None:
    owner, pack_id = buy_pack(byz, 20)
    evil = byz.identity(3)
    o1 = order(byz, owner, pack_id, 0, 5, evil.address)
    o2 = order(byz, owner, pack_id, 0, 7, evil.address)
    first = vote_request(byz, evil, 1, o1)
    assert first.status_code == 200
    byz.daemons[1].kill()  # SIGKILL right after it answered
    byz.daemons[1].start()
    byz.daemons[1].wait_ready()
    r = vote_request(byz, evil, 1, o2)
    assert r.status_code == 422 and r.json()["reason"] == "conflicting_order"
    same = vote_request(byz, evil, 1, o1)
    assert same.status_code == 200 and same.json() == first.json()  # the same vote


def test_vote_batch_answers_each_item_and_refuses_a_bad_batch(byz: LocalFederation) -> None:
    """One signed batch of vote requests: each item gets its own answer (a vote, or the
    reason it was refused) and one bad item does not spoil the others; a malformed or
    oversized batch is refused as a whole, with nothing voted."""
    net = byz.network
    assert net is not None
    owner, pack_id = buy_pack(byz, 20)
    evil = byz.identity(3)
    good = order(byz, owner, pack_id, 0, 5, evil.address)
    ahead = order(byz, owner, pack_id, 4, 5, evil.address)
    not_mine = order(byz, owner, pack_id, 0, 5, byz.daemons[1].address)
    target = byz.daemons[0]

    def send(items: Any) -> httpx.Response:
        body = sign_transport(evil, net, "spend_vote_batch", target.address, {"items": items})
        return httpx.post(
            f"{target.url}/p2p/spend_votes",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )

    for items in ([], [{"order": good, "prior": None}] * 257, "not a list"):
        r = send(items)
        assert r.status_code == 400 and "items" in r.json()["detail"], r.text
    r = send(
        [
            {"order": good, "prior": None},
            "junk",
            {"order": ahead, "prior": None},
            {"order": not_mine, "prior": None},
            {"order": good, "prior": None},  # asked twice in one batch: the same vote
        ]
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert "ok" in results[0] and results[4] == results[0]
    assert results[1]["error"]["status"] == 400
    assert results[2]["error"]["reason"] == "sequence_ahead"
    # any member may gather votes for any order (a client's retry elsewhere), but a voter
    # still never votes for two orders at one sequence
    assert results[3]["error"]["reason"] == "conflicting_order"
    # the vote is durable and the same when asked again alone
    again = vote_request(byz, evil, 0, good)
    assert again.status_code == 200 and again.json()["vote"] == results[0]["ok"]
