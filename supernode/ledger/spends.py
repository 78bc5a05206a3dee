"""Spend votes and certificates, and applying certificates to packs in sequence order.

A certificate is applied exactly when its sequence is below its pack's ``next_sequence``;
the ``applied`` column mirrors that for queries.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from loguru import logger

from supernode.ledger.db import Record, dict_row, dict_rows, insert_sql
from supernode.ledger.inference import apply_refunds
from supernode.ledger.models import SpendCertificate, SpendVote

# the columns an insert fills: all but the row number
CERT_COLUMNS = tuple(c for c in SpendCertificate.__table__.columns.keys() if c != "id")
VOTE_COLUMNS = tuple(c for c in SpendVote.__table__.columns.keys() if c != "id")
AHEAD_MAX = 10_000  # certificates ahead of a pack's next sequence looked at per apply
VOTES = Record("spend votes", durable=True)  # on disk before the vote leaves the process
CERTIFICATES = Record("spend certificates", durable=True)


def vote_for(conn: sqlite3.Connection, pack_id: str, sequence: int) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT * FROM spend_votes WHERE pack_id = ? AND sequence = ?", (pack_id, sequence)
    )
    return dict_row(cur)


def add_vote(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    conn.execute(insert_sql("spend_votes", VOTE_COLUMNS), [row[c] for c in VOTE_COLUMNS])


def certificate_at(conn: sqlite3.Connection, pack_id: str, sequence: int) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT * FROM spend_certificates WHERE pack_id = ? AND sequence = ?", (pack_id, sequence)
    )
    return dict_row(cur)


def certificates_from(
    conn: sqlite3.Connection, pack_id: str, from_sequence: int, limit: int
) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM spend_certificates WHERE pack_id = ? AND sequence >= ?"
        " ORDER BY sequence LIMIT ?",
        (pack_id, from_sequence, limit),
    )
    return dict_rows(cur)


def add_certificate(conn: sqlite3.Connection, row: dict[str, Any]) -> str:
    """Store a certificate: 'new', 'known' (same order), or 'conflict' (another order
    holds that sequence: a quorum signed two orders, which needs > f faulty members)."""
    known = conn.execute(
        "SELECT order_id FROM spend_certificates WHERE pack_id = ? AND sequence = ?",
        (row["pack_id"], row["sequence"]),
    ).fetchone()
    if known is not None:
        if known[0] == row["order_id"]:
            return "known"
        logger.critical(
            "CONFLICTING spend certificates for pack {} sequence {}: {} and {}",
            row["pack_id"],
            row["sequence"],
            known[0],
            row["order_id"],
        )
        return "conflict"
    values = {**row, "applied": 0}
    conn.execute(
        insert_sql("spend_certificates", CERT_COLUMNS, skip_duplicates=True),
        [values[c] for c in CERT_COLUMNS],
    )
    if row["delegation_id"] is not None:  # the delegation's running total, in step
        conn.execute(
            "INSERT INTO delegation_totals (delegation_id, spent) VALUES (?, ?) "
            "ON CONFLICT (delegation_id) DO UPDATE SET spent = spent + excluded.spent",
            (row["delegation_id"], row["amount"]),
        )
    return "new"


def apply_ready(conn: sqlite3.Connection, pack_id: str) -> int:
    """Apply the pack's stored certificates from its next sequence on, in order, while
    there is no gap. Returns how many were applied."""
    pack = conn.execute(
        "SELECT remaining_credits, next_sequence FROM credit_packs WHERE pack_id = ?",
        (pack_id,),
    ).fetchone()
    if pack is None:
        return 0  # the pack's own certificate has not arrived yet: apply later
    remaining, nxt = pack
    ahead = conn.execute(
        "SELECT id, sequence, order_id, amount FROM spend_certificates"
        " WHERE pack_id = ? AND sequence >= ? ORDER BY sequence LIMIT ?",
        (pack_id, nxt, AHEAD_MAX),
    ).fetchall()
    applied: list[tuple[int]] = []
    for cert_id, sequence, order_id, amount in ahead:
        if sequence != nxt:
            break  # a gap: the missing certificate comes by gossip or catch-up
        if amount > remaining:
            logger.critical(
                "certificate {} spends {} of pack {} holding {}: not applied",
                order_id,
                amount,
                pack_id,
                remaining,
            )
            break
        remaining -= amount
        applied.append((cert_id,))
        nxt += 1
    if applied:
        conn.executemany("UPDATE spend_certificates SET applied = 1 WHERE id = ?", applied)
        conn.execute(
            "UPDATE credit_packs SET remaining_credits = ?, next_sequence = ? WHERE pack_id = ?",
            (remaining, nxt, pack_id),
        )
    apply_refunds(conn, pack_id)  # refunds wait for their spend
    return len(applied)


def add_revocation(
    conn: sqlite3.Connection,
    *,
    delegation_id: str,
    pack_id: str,
    owner: str,
    revoked_at: float,
    envelope_id: str,
    revocation: bytes,
    received_at: float,
) -> None:
    """Record a revoked delegation (the first revocation of it stands)."""
    conn.execute(
        "INSERT OR IGNORE INTO delegation_revocations (delegation_id, pack_id, owner, "
        "revoked_at, envelope_id, revocation, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (delegation_id, pack_id, owner, revoked_at, envelope_id, revocation, received_at),
    )


def revoked_at(conn: sqlite3.Connection, delegation_id: str) -> float | None:
    """When the owner revoked this delegation, or None (one primary-key read)."""
    row = conn.execute(
        "SELECT revoked_at FROM delegation_revocations WHERE delegation_id = ?",
        (delegation_id,),
    ).fetchone()
    return row[0] if row else None


def delegated_spent(conn: sqlite3.Connection, delegation_id: str) -> int:
    """Credits certified so far under one delegation: its running total, kept by
    add_certificate (one row read, however many certificates the delegation has)."""
    row = conn.execute(
        "SELECT spent FROM delegation_totals WHERE delegation_id = ?", (delegation_id,)
    ).fetchone()
    return row[0] if row else 0


def pack_state(conn: sqlite3.Connection, pack_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM credit_packs WHERE pack_id = ?", (pack_id,))
    return dict_row(cur)


def delegation_usage(
    conn: sqlite3.Connection, delegation_id: str, since: float
) -> list[dict[str, Any]]:
    """What a delegation (an API key) spent since ``since``, per UTC day and model:
    requests, prompt and completion tokens, credits certified and refunded. Read from the
    append-only records (certificates by their delegation index, each request's row by its
    key, its refunds by theirs): the key's own rows, none of any other key's."""
    cur = conn.execute(
        "SELECT date(c.received_at, 'unixepoch') AS day, r.model AS model, "
        "count(*) AS requests, "
        "coalesce(sum(coalesce(r.input_tokens, r.prompt_tokens)), 0) AS prompt_tokens, "
        "coalesce(sum(coalesce(r.output_tokens, 0)), 0) AS completion_tokens, "
        "sum(c.amount) AS credits_certified, "
        "coalesce(sum((SELECT coalesce(sum(f.amount), 0) FROM refunds f "
        "WHERE f.request_id = c.request_id)), 0) AS credits_refunded "
        "FROM spend_certificates c JOIN inference_requests r ON r.request_id = c.request_id "
        "WHERE c.delegation_id = ? AND c.received_at >= ? "
        "GROUP BY day, model ORDER BY day, model",
        (delegation_id, since),
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def delegation_pack(conn: sqlite3.Connection, delegation_id: str) -> str | None:
    """The pack a delegation spent from (its first certificate's), or None."""
    row = conn.execute(
        "SELECT pack_id FROM spend_certificates WHERE delegation_id = ? LIMIT 1",
        (delegation_id,),
    ).fetchone()
    return row[0] if row else None
