"""Spend votes and certificates, and applying certificates to packs in sequence order.

A certificate is applied exactly when its sequence is below its pack's ``next_sequence``;
the ``applied`` column mirrors that for queries.
"""

from __future__ import annotations

import sqlite3
import time
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
    values = {"kind": "spend", "delegate": None, "expires_at": None, **row, "applied": 0}
    conn.execute(
        insert_sql("spend_certificates", CERT_COLUMNS, skip_duplicates=True),
        [values[c] for c in CERT_COLUMNS],
    )
    return "new"


def apply_ready(conn: sqlite3.Connection, pack_id: str) -> int:
    """Apply the pack's stored certificates from its next sequence on, in order, while
    there is no gap. Returns how many were applied."""
    pack = conn.execute(
        "SELECT remaining_credits, next_sequence, parent_pack_id FROM credit_packs"
        " WHERE pack_id = ?",
        (pack_id,),
    ).fetchone()
    if pack is None:
        return 0  # the pack's own certificate has not arrived yet: apply later
    remaining, nxt, parent = pack
    ahead = conn.execute(
        "SELECT id, sequence, order_id, amount, kind, delegation_id, delegate, expires_at"
        " FROM spend_certificates WHERE pack_id = ? AND sequence >= ? ORDER BY sequence"
        " LIMIT ?",
        (pack_id, nxt, AHEAD_MAX),
    ).fetchall()
    applied: list[tuple[int]] = []
    made: list[str] = []  # reservations' packs made here
    for cert_id, sequence, order_id, amount, kind, delegation_id, delegate, expires in ahead:
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
        if kind == "reserve":
            child = _reserve(conn, pack_id, delegation_id, delegate, amount, expires)
            if child is None:
                remaining += amount  # reserved already: the credits stay in the pack
            else:
                made.append(child)
        elif kind == "close" and parent is not None:
            conn.execute(  # the reservation's credits go back to its pack
                "UPDATE credit_packs SET remaining_credits = remaining_credits + ?"
                " WHERE pack_id = ?",
                (amount, parent),
            )
        applied.append((cert_id,))
        nxt += 1
    if applied:
        conn.executemany("UPDATE spend_certificates SET applied = 1 WHERE id = ?", applied)
        conn.execute(
            "UPDATE credit_packs SET remaining_credits = ?, next_sequence = ? WHERE pack_id = ?",
            (remaining, nxt, pack_id),
        )
    apply_refunds(conn, pack_id)  # refunds wait for their spend
    for child in made:  # its spends may have come before the reservation did
        apply_ready(conn, child)
    return len(applied)


def _reserve(
    conn: sqlite3.Connection,
    pack_id: str,
    delegation_id: str,
    delegate: str,
    amount: int,
    expires_at: float,
) -> str | None:
    """Make a reservation's pack (None if that delegation has one already)."""
    from supernode.credits.orders import reservation_id

    child = reservation_id(pack_id, delegation_id)
    parent = conn.execute(
        "SELECT chain_id, block_number FROM credit_packs WHERE pack_id = ?", (pack_id,)
    ).fetchone()
    cur = conn.execute(
        "INSERT OR IGNORE INTO credit_packs (pack_id, buyer, credits, remaining_credits,"
        " next_sequence, amount_wei, chain_id, tx_hash, block_number, certificate,"
        " certified_at, parent_pack_id, delegation_id, expires_at)"
        " VALUES (?, ?, ?, ?, 0, '0', ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            child,
            delegate,
            amount,
            amount,
            parent[0],
            child,  # (unique like a payment's: the reservation's own id)
            parent[1],
            b"{}",
            time.time(),
            pack_id,
            delegation_id,
            expires_at,
        ),
    )
    if cur.rowcount != 1:
        logger.warning("delegation {} of pack {} reserved twice", delegation_id, pack_id)
        return None
    return child


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


def pack_state(conn: sqlite3.Connection, pack_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM credit_packs WHERE pack_id = ?", (pack_id,))
    return dict_row(cur)


def delegation_usage(conn: sqlite3.Connection, pack_id: str, since: float) -> list[dict[str, Any]]:
    """What a reservation's pack (an API key's credits) was charged since ``since``, per
    UTC day and model: requests, prompt and completion tokens, credits charged, and of
    those the credits settled (certified) and not yet. Read from its delegate's record of
    each request answered from it (by its pack index): the key's own rows only."""
    cur = conn.execute(
        "SELECT date(created_at, 'unixepoch') AS day, model, count(*) AS requests, "
        "coalesce(sum(coalesce(input_tokens, prompt_tokens)), 0) AS prompt_tokens, "
        "coalesce(sum(coalesce(output_tokens, 0)), 0) AS completion_tokens, "
        "coalesce(sum(coalesce(charged, cost)), 0) AS credits, "
        "coalesce(sum(CASE WHEN settle_state = 'settled' THEN charged ELSE 0 END), 0)"
        " AS credits_settled "
        "FROM inference_requests WHERE pack_id = ? AND settle_state IS NOT NULL"
        " AND settle_state != 'refused' AND created_at >= ? "
        "GROUP BY day, model ORDER BY day, model",
        (pack_id, since),
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def reservation_of(conn: sqlite3.Connection, delegation_id: str) -> dict[str, Any] | None:
    """The pack a delegation's reservation made, or None (not reserved, or not here yet)."""
    cur = conn.execute("SELECT * FROM credit_packs WHERE delegation_id = ?", (delegation_id,))
    return dict_row(cur)


def reservations_to_close(conn: sqlite3.Connection, delegate: str, now: float) -> list[str]:
    """The reservations ``delegate`` holds with credits left whose key expired or was
    revoked: their remaining credits go back to their packs."""
    cur = conn.execute(
        "SELECT p.pack_id FROM credit_packs p WHERE p.buyer = ? AND p.parent_pack_id IS NOT NULL"
        " AND p.remaining_credits > 0 AND (p.expires_at < ? OR EXISTS (SELECT 1 FROM"
        " delegation_revocations r WHERE r.delegation_id = p.delegation_id))",
        (delegate, now),
    )
    return [r[0] for r in cur]


def reservation_certificate(conn: sqlite3.Connection, delegation_id: str) -> dict[str, Any] | None:
    """The certificate row of the reservation that funds ``delegation_id``, or None."""
    cur = conn.execute(
        "SELECT * FROM spend_certificates WHERE delegation_id = ? AND kind = 'reserve'",
        (delegation_id,),
    )
    return dict_row(cur)
