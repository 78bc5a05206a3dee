"""The reputation events' checks, one per refusal reason, on a real ledger: what a member
may not send is refused with its reason, and what it may is stored."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supernode.crypto.envelope import Envelope, EnvelopeError, sign_envelope
from supernode.crypto.keys import Identity
from supernode.errors import IGNORE, REJECT
from supernode.federation.handlers import Checked
from supernode.federation.network import NetworkFile, init_network
from supernode.ledger.db import Ledger, run_migrations
from supernode.reputation import rules
from supernode.reputation.clock import EpochClock
from supernode.reputation.events import (
    LIVENESS,
    SEED_COMMIT,
    SEED_REVEAL,
    VERDICT,
    ReputationHandler,
)

BLOCKS = 5
HEAD_EPOCH = 20
T0 = 1_000_000


def start_of(epoch: int) -> int:
    return T0 + 10 * epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("events")
    net, keystores = init_network(
        root,
        urls=[f"http://127.0.0.1:{9000 + i}" for i in range(4)],
        chain_id=31337,
        passphrase="correct horse battery staple 42",
        credit_price_wei=1,
        min_collateral_wei=1,
        confirmations_required=1,
        epoch_blocks=BLOCKS,
        light_kdf=True,
    )
    from supernode.crypto.keys import load_keystore

    ids = [load_keystore(k, "correct horse battery staple 42") for k in keystores]
    run_migrations(root / "ledger.sqlite")
    db = Ledger(root / "ledger.sqlite", 5000)
    clock = EpochClock(None, BLOCKS, 1)  # type: ignore[arg-type]  # no chain: a set cache
    clock.head = HEAD_EPOCH * BLOCKS + 2
    for e in range(HEAD_EPOCH + 1):
        clock.learn(e, start_of(e))
    rate = {"bps": 10_000}
    yield {"net": net, "ids": ids, "db": db, "clock": clock, "rate": rate}
    asyncio.run(db.close())


def handler(w: dict[str, Any], type_: str) -> ReputationHandler:
    return ReputationHandler(
        type_,
        db=w["db"],
        clock=w["clock"],
        network=w["net"],
        rate_for=lambda x, e: w["rate"]["bps"],
    )


def sign(w: dict[str, Any], who: int | Identity, type_: str, at: int, **payload: Any) -> Envelope:
    ident = w["ids"][who] if isinstance(who, int) else who
    net: NetworkFile = w["net"]
    return sign_envelope(
        ident,
        type_=type_,
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload=payload,
        ttl_s=3600,
        now=at,
    )


def check(w: dict[str, Any], env: Envelope) -> Any:
    return handler(w, env.type).validate(env)


def store(w: dict[str, Any], env: Envelope) -> None:
    h = handler(w, env.type)
    parsed = h.validate(env)

    async def go() -> None:
        async with w["db"].write(h.record) as conn:
            h.store(conn, [Checked(env, b"", None, parsed)], 0.0)

    asyncio.run(go())


def refused(w: dict[str, Any], env: Envelope, reason: str, verdict: str = REJECT) -> None:
    with pytest.raises(EnvelopeError) as exc:
        check(w, env)
    assert exc.value.reason == reason, exc.value
    assert exc.value.verdict == verdict, exc.value


def seed() -> str:
    return "0x" + secrets.token_bytes(32).hex()


def summary(w: dict[str, Any], executor: int, at: int, *request_ids: str) -> dict[str, Any]:
    """An executor's signed summaries of ``request_ids`` (one envelope)."""
    item = {
        "model": "m",
        "status": "completed",
        "result_hash": "0x" + "00" * 32,
        "input_tokens": 3,
        "output_tokens": 4,
        "latency_ms": 5,
    }
    results = [{"request_id": r, **item} for r in request_ids]
    return sign(w, executor, "inference_results", at, results=results).to_wire()


def test_commitments_come_before_their_epoch(world: dict[str, Any]) -> None:
    s = seed()
    refused(
        world,
        sign(world, 0, SEED_COMMIT, start_of(20) + 1, epoch=20, commitment=rules.commitment_of(s)),
        "late_commit",
    )
    check(
        world,
        sign(world, 0, SEED_COMMIT, start_of(20), epoch=20, commitment=rules.commitment_of(s)),
    )
    check(
        world,
        sign(world, 0, SEED_COMMIT, start_of(20) + 5, epoch=21, commitment=rules.commitment_of(s)),
    )


class MovingChain:
    """A chain whose head the test moves (the clock reads it as it would anvil)."""

    def __init__(self, head: int) -> None:
        self.head = head
        self.reads = 0

    async def block_number(self) -> int:
        self.reads += 1
        return self.head

    async def block_timestamp(self, n: int) -> int:
        return start_of(n // BLOCKS) + n % BLOCKS


def test_an_epoch_ahead_is_judged_on_a_head_read_after_it_was_signed(
    world: dict[str, Any],
) -> None:
    chain = MovingChain(HEAD_EPOCH * BLOCKS)
    clock = EpochClock(chain, BLOCKS, 1)  # type: ignore[arg-type]
    asyncio.run(clock.refresh())
    assert clock.epoch == HEAD_EPOCH and clock.read_at is not None
    h = ReputationHandler(
        SEED_COMMIT, db=world["db"], clock=clock, network=world["net"], rate_for=lambda a, e: 1
    )
    read_at = int(clock.read_at)
    ahead = HEAD_EPOCH + 3

    def commit(at: int, epoch: int) -> Envelope:
        return sign(world, 0, SEED_COMMIT, at, epoch=epoch, commitment=rules.commitment_of(seed()))

    def verdict(env: Envelope) -> tuple[str, str]:
        with pytest.raises(EnvelopeError) as exc:
            h.validate(env)
        return exc.value.reason or "", exc.value.verdict

    # signed before our read of the head: the chain was nowhere near that epoch
    assert verdict(commit(read_at - 5, ahead)) == ("epoch_ahead", REJECT)
    # signed after it: our head may be the stale one, not judged against the sender
    late = commit(read_at + 2, ahead)
    assert verdict(late) == ("epoch_ahead", IGNORE)
    # blocks came in a burst meanwhile: prepare() reads the head again, once per batch
    chain.head = (ahead - 1) * BLOCKS
    clock.read_at = read_at - 1.0  # (the last read was a while ago)
    reads = chain.reads
    asyncio.run(h.prepare([late, late]))
    assert chain.reads == reads + 1 and clock.epoch == ahead - 1
    h.validate(late)
    # nothing ahead: no read
    asyncio.run(h.prepare([commit(read_at + 2, ahead)]))
    assert chain.reads == reads + 1
    # a head older than the one held (two reads crossed) does not move the clock back
    chain.head = HEAD_EPOCH * BLOCKS
    asyncio.run(clock.refresh())
    assert clock.epoch == ahead - 1


def test_nothing_counts_for_a_closed_epoch(world: dict[str, Any]) -> None:
    closed = world["clock"].close_time(10)
    assert closed == start_of(12)
    refused(world, sign(world, 0, LIVENESS, closed + 1, epoch=10, observations=[]), "epoch_closed")
    check(world, sign(world, 0, LIVENESS, closed, epoch=10, observations=[]))


def test_a_reveal_comes_after_its_epoch_and_matches_its_commitment(world: dict[str, Any]) -> None:
    s = seed()
    # no commitment here yet (it may come in the same batch): stored, the tally decides
    check(world, sign(world, 1, SEED_REVEAL, start_of(18), epoch=17, seed=s))
    store(
        world,
        sign(world, 1, SEED_COMMIT, start_of(17) - 1, epoch=17, commitment=rules.commitment_of(s)),
    )
    refused(world, sign(world, 1, SEED_REVEAL, start_of(18) - 1, epoch=17, seed=s), "early_reveal")
    refused(
        world, sign(world, 1, SEED_REVEAL, start_of(18), epoch=17, seed=seed()), "reveal_mismatch"
    )
    check(world, sign(world, 1, SEED_REVEAL, start_of(18), epoch=17, seed=s))
    # an epoch after the head's has certainly not ended (the head's own may have, elsewhere)
    refused(world, sign(world, 1, SEED_REVEAL, start_of(20) + 1, epoch=21, seed=s), "early_reveal")


def test_verdicts_need_a_real_request_an_assignment_and_another_member(
    world: dict[str, Any],
) -> None:
    rid = "0x" + secrets.token_bytes(32).hex()
    executor = world["ids"][3].address
    other = "0x" + secrets.token_bytes(32).hex()
    ran = summary(world, 3, start_of(16) + 2, other, rid)  # one of a batch

    def verdict(who: int | Identity, **kw: Any) -> Envelope:
        p = {
            "epoch": 16,
            "request_id": rid,
            "executor": executor,
            "verdict": "pass",
            "summary": ran,
            **kw,
        }
        return sign(world, who, VERDICT, start_of(17), **p)

    refused(world, verdict(3), "self_audit")
    items = ran["payload"]["results"]
    forged = {**ran, "payload": {"results": [items[0], {**items[1], "output_tokens": 99}]}}
    refused(world, verdict(2, summary=forged), "unknown_request")
    not_in_it = summary(world, 3, start_of(16) + 2, other)  # the executor's, not this request
    refused(world, verdict(2, summary=not_in_it), "unknown_request")
    by_other = summary(world, 1, start_of(16) + 2, rid)  # signed by someone else
    refused(world, verdict(2, summary=by_other), "unknown_request")
    refused(world, verdict(2, epoch=15), "wrong_epoch")
    check(world, verdict(2))  # seed not revealed yet: cannot tell, stored; the tally decides
    # after the auditor's reveal, a seed that does not draw the request is refused
    s = seed()
    store(
        world,
        sign(world, 2, SEED_COMMIT, start_of(16) - 1, epoch=16, commitment=rules.commitment_of(s)),
    )
    store(world, sign(world, 2, SEED_REVEAL, start_of(17), epoch=16, seed=s))
    world["rate"]["bps"] = 0
    try:
        refused(world, verdict(2), "not_assigned")
    finally:
        world["rate"]["bps"] = 10_000
    check(world, verdict(2))


def test_liveness_names_members_only(world: dict[str, Any]) -> None:
    outsider = Identity.generate().address
    refused(
        world,
        sign(
            world,
            0,
            LIVENESS,
            start_of(19),
            epoch=18,
            observations=[{"subject": outsider, "probes": 3, "failures": 0}],
        ),
        "bad_payload",
    )
    member = world["ids"][1].address
    refused(
        world,
        sign(
            world,
            0,
            LIVENESS,
            start_of(19),
            epoch=18,
            observations=[{"subject": member, "probes": 3, "failures": 4}],
        ),
        "bad_payload",
    )
    check(
        world,
        sign(
            world,
            0,
            LIVENESS,
            start_of(19),
            epoch=18,
            observations=[{"subject": member, "probes": 3, "failures": 1}],
        ),
    )
