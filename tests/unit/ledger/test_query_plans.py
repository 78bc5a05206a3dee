"""No per-request statement reads a table that grows with history: every statement the
spend, inference and intake paths run is checked with EXPLAIN QUERY PLAN (a SEARCH by an
index, never a SCAN of a growing table)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from supernode.ledger import credits as credits_repo
from supernode.ledger import envelopes as env_repo
from supernode.ledger import inference as inf_repo
from supernode.ledger import peers as peers_repo
from supernode.ledger import reputation as rep_repo
from supernode.ledger import spends as spends_repo
from supernode.ledger.db import run_migrations

GROWING = {
    "seen_envelopes",
    "messages",
    "user_messages",
    "peer_penalties",
    "used_challenges",
    "credit_purchases",
    "payments_used",
    "credit_packs",
    "spend_votes",
    "spend_certificates",
    "delegation_revocations",
    "refunds",
    "inference_requests",
    "inference_results",
    "reputation_events",
    "audit_tasks",
    "audit_seeds",
    "reputation_tables",
}
PACK, REQ, DELEGATION = "0x" + "aa" * 32, "0x" + "bb" * 32, "0x" + "dd" * 32
ADDR = "0x" + "11" * 20


def hot_path(conn: sqlite3.Connection) -> None:
    """What one spend, one inference request and one gossip batch run, with history."""
    credits_repo.add_pack(
        conn,
        {
            "pack_id": PACK,
            "buyer": ADDR,
            "credits": 10**9,
            "remaining_credits": 10**9,
            "amount_wei": "1",
            "chain_id": 1,
            "tx_hash": "0x" + "cc" * 32,
            "block_number": 1,
            "certificate": b"{}",
            "certified_at": 0.0,
        },
    )
    for seq in range(3):
        row = {
            "pack_id": PACK,
            "sequence": seq,
            "order_id": f"0x{seq:064x}",
            "request_id": REQ if seq == 2 else f"0x{seq + 100:064x}",
            "executor": ADDR,
            "spender": ADDR,
            "amount": 5,
            "delegation_id": DELEGATION,
            "certificate": b"{}",
            "received_at": 0.0,
        }
        spends_repo.vote_for(conn, PACK, seq)
        spends_repo.add_vote(
            conn,
            {
                "pack_id": PACK,
                "sequence": seq,
                "order_id": row["order_id"],
                "amount": 5,
                "executor": ADDR,
                "signature": "0x",
                "voted_at": 0.0,
            },
        )
        spends_repo.reservation_of(conn, DELEGATION)
        spends_repo.revoked_at(conn, DELEGATION)
        spends_repo.delegation_usage(conn, PACK, 0.0)  # a key's report: its rows only
        spends_repo.pack_state(conn, PACK)
        spends_repo.add_certificate(conn, row)
        spends_repo.apply_ready(conn, PACK)
        spends_repo.certificate_at(conn, PACK, seq)
        spends_repo.certificates_from(conn, PACK, seq, 1)
    inf_repo.add_request(
        conn,
        {
            "request_id": REQ,
            "usage_request_id": "0x" + "ee" * 32,
            "requester": ADDR,
            "pack_id": PACK,
            "model": "m",
            "prompt": "p",
            "params": b"{}",
            "prompt_tokens": 1,
            "cost": 5,
            "quote_expires_at": 0.0,
            "status": inf_repo.QUOTED,
            "refunded": 0,
            "created_at": 0.0,
            "updated_at": 0.0,
        },
    )
    inf_repo.get_request(conn, REQ)
    inf_repo.update_request(conn, REQ, status=inf_repo.RUNNING)
    inf_repo.add_refund(
        conn,
        {
            "envelope_id": "0x" + "ff" * 32,
            "pack_id": PACK,
            "sequence": 2,
            "request_id": REQ,
            "executor": ADDR,
            "amount": 1,
            "reason": "unused",
            "received_at": 0.0,
        },
    )
    inf_repo.apply_refunds(conn, PACK)
    inf_repo.refunded_for(conn, REQ)
    env_repo.known_ids(conn, ["0x" + "01" * 32, "0x" + "02" * 32])
    env_repo.ids_after(conn, 0, 10, ADDR, 100)
    env_repo.raws_by_id(conn, ["0x" + "01" * 32], ADDR)
    env_repo.last_seq(conn)
    peers_repo.use_challenge(conn, "0x" + "03" * 32, ADDR, 0.0)
    peers_repo.bans(conn, 0.0)
    credits_repo.get_purchase(conn, PACK)
    credits_repo.get_pack(conn, PACK)
    credits_repo.payment_user(conn, 1, "0x" + "cc" * 32)
    # audits and reputation: the intake's checks, the auditor's round, an epoch's table
    rep_repo.commitments(conn, ADDR, 7)
    rep_repo.revealed_seed(conn, ADDR, 7)
    rep_repo.has_event(conn, ADDR, 7, "liveness")
    rep_repo.summary_of(conn, REQ)
    rep_repo.spend_payer(conn, REQ)
    rep_repo.summaries_since(conn, 10, 500)
    rep_repo.summaries_between(conn, 100.0, 200.0)
    rep_repo.summaries_before(conn, 100.0)
    rep_repo.events_of(conn, 7)
    rep_repo.events_by(conn, ADDR, 7, 100)
    rep_repo.events_about(conn, ADDR, 7, 100)
    rep_repo.seed_for(conn, 7)
    rep_repo.seeds_to_reveal(conn, 7)
    rep_repo.due_tasks(conn, 100.0, 4)
    rep_repo.update_task(conn, REQ, state="done")
    rep_repo.get_table(conn, 7)
    rep_repo.latest_table(conn)


def test_no_hot_statement_scans_a_growing_table(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    conn = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    hot_path(conn)
    conn.set_trace_callback(None)
    checked = 0
    for sql in dict.fromkeys(statements):
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        checked += 1
        for step in plan:
            scanned = re.match(r"SCAN (\w+)", step)
            assert not (scanned and scanned.group(1) in GROWING), f"{sql}\n  -> {plan}"
    assert checked >= 15, checked  # the hot path's reads and updates were all looked at
