"""The intake pipeline against a real SQLite file, in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity
from supernode.federation.handlers import HandlerRegistry
from supernode.federation.intake import Intake
from supernode.federation.messaging import SnMessageHandler
from supernode.federation.network import Member, NetworkFile
from supernode.federation.scoring import PeerScoring
from supernode.ledger import messages as msg_repo
from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger, run_migrations

KEYS = [Identity(bytes([i + 1]) * 32) for i in range(4)]
OUTSIDER = Identity(bytes([99]) * 32)
NETWORK = NetworkFile(
    network_id="unit-net",
    chain_id=31337,
    payment_address=KEYS[0].address,
    credit_price_wei=1,
    min_collateral_wei=1,
    confirmations_required=1,
    epoch_blocks=10,
    members=[
        Member(address=k.address, url=f"http://127.0.0.1:{9000 + i}", public_key=k.public_key_hex)
        for i, k in enumerate(KEYS)
    ],
)
ME = KEYS[0]


class Node:
    def __init__(self, path: Path) -> None:
        run_migrations(path)
        self.db = Ledger(path)
        self.scoring = PeerScoring(
            self.db, points_invalid=10, window_s=3600, threshold=30, ban_s=3600
        )
        registry = HandlerRegistry()
        registry.register(SnMessageHandler(1000))
        self.intake = Intake(
            network=NETWORK,
            me=ME.address,
            db=self.db,
            scoring=self.scoring,
            registry=registry,
            clock_skew_s=30,
            max_ttl_s=10**6,
            max_envelope_bytes=10_000,
            write_batch_max=1000,
        )

    async def __aenter__(self) -> Node:
        async with self.db.write(peers_repo.PEERS) as conn:
            peers_repo.sync_members(conn, [m.model_dump() for m in NETWORK.members])
        self.scoring.load()
        self.intake.writer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.intake.writer.stop()
        await self.db.close()


def message(sender: Identity, body: str, **kw: object) -> Envelope:
    return sign_envelope(
        sender,
        type_="sn_message",
        network_id="unit-net",
        chain_id=31337,
        payload={"message_type": "t", "message_body": body},
        **kw,
    )


async def test_duplicates_dropped_and_seen_set_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    env = message(KEYS[1], "hello").to_wire()
    async with Node(db) as led:
        first = await led.intake.ingest([env], via=KEYS[1].address)
        again = await led.intake.ingest([env, env], via=KEYS[2].address)
    assert len(first.accepted) == 1 and again.duplicates == 2 and not again.accepted
    async with Node(db) as led:  # a restart: empty memory, same file
        after = await led.intake.ingest([env], via=KEYS[3].address)
        with led.db.read() as conn:
            rows = msg_repo.recent_messages(conn, 0, None, 100)
            meta = msg_repo.metadata(conn)
    assert after.duplicates == 1 and not after.accepted
    assert len(rows) == 1
    assert meta["by_type"] == [{"message_type": "t", "total_messages": 1, "total_bytes": 5}]


async def test_concurrent_copies_store_once(tmp_path: Path) -> None:
    env = message(KEYS[1], "race").to_wire()
    async with Node(tmp_path / "l.sqlite") as led:
        reports = await asyncio.gather(
            *(led.intake.ingest([env], via=KEYS[i % 3 + 1].address) for i in range(20))
        )
        with led.db.read() as conn:
            rows = msg_repo.recent_messages(conn, 0, None, 100)
    assert sum(len(r.accepted) for r in reports) == 1
    assert sum(r.duplicates for r in reports) == 19
    assert len(rows) == 1


async def test_forgeries_penalise_the_deliverer_until_banned_across_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "l.sqlite"
    relay = KEYS[2].address
    good = message(KEYS[1], "x")
    forged = [
        {
            **message(KEYS[1], f"forged {i}").to_wire(),
            "signature": message(KEYS[3], f"forged {i}").signature,
        }
        for i in range(3)
    ]
    async with Node(db) as led:
        rep = await led.intake.ingest([forged[0], good.to_wire()], via=relay)
        assert [r["reason"] for r in rep.rejected] == ["bad_signature"]
        assert len(rep.accepted) == 1
        assert led.scoring.banned_until(relay) is None
        await led.intake.ingest(forged[1:], via=relay)
        assert led.scoring.banned_until(relay) is not None
    async with Node(db) as led:
        assert led.scoring.banned_until(relay) is not None  # persisted
        with led.db.read() as conn:
            pens = peers_repo.recent_penalties(conn, relay, 10)
        assert len(pens) == 3 and {p["points"] for p in pens} == {10}


async def test_unknown_sender_and_wrong_recipient_rejected(tmp_path: Path) -> None:
    async with Node(tmp_path / "l.sqlite") as led:
        rep = await led.intake.ingest(
            [
                message(OUTSIDER, "who am i").to_wire(),
                message(KEYS[1], "not for me", recipient=KEYS[2].address).to_wire(),
                {"type": "sn_message"},
                "not an object",
            ],
            via=KEYS[1].address,
        )
    reasons = sorted(r["reason"] for r in rep.rejected)
    assert reasons == ["malformed", "malformed", "unknown_sender", "wrong_recipient"]
    assert not rep.accepted


async def test_business_rule_rejects_bad_payload(tmp_path: Path) -> None:
    bad = sign_envelope(
        KEYS[1],
        type_="sn_message",
        network_id="unit-net",
        chain_id=31337,
        payload={"message_type": "has space", "message_body": "x"},
    )
    unknown = sign_envelope(
        KEYS[1], type_="mystery", network_id="unit-net", chain_id=31337, payload={}
    )
    async with Node(tmp_path / "l.sqlite") as led:
        rep = await led.intake.ingest([bad.to_wire(), unknown.to_wire()], via=None)
    assert sorted(r["reason"] for r in rep.rejected) == ["bad_payload", "unknown_type"]


@pytest.mark.parametrize("n", [1, 300])
async def test_group_commit_batches(tmp_path: Path, n: int) -> None:
    envs = [message(KEYS[1], f"m{i}").to_wire() for i in range(n)]
    async with Node(tmp_path / "l.sqlite") as led:
        reports = await asyncio.gather(*(led.intake.ingest([e], via=None) for e in envs))
        commits = led.intake.writer.commits
    assert sum(len(r.accepted) for r in reports) == n
    # what queued while a commit ran went into the next one: a handful of transactions for
    # 300 envelopes (one each would be 300), and one for one
    assert commits == 1 if n == 1 else 1 <= commits <= n // 50, commits
