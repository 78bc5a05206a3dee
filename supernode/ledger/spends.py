"""Spend votes and certificates, and applying certificates to packs in sequence order.

These run for every spend at every member, so they are plain SQL on the transaction's
sqlite3 connection (``sqlite_of``), not SQLAlchemy-built statements (see ledger/db.py).
A certificate is applied exactly when its sequence is below its pack's ``next_sequence``;
the ``applied`` column mirrors that for queries.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from supernode.ledger.db import Conn, dict_row, dict_rows, insert_sql, sqlite_of
from supernode.ledger.inference import apply_refunds
from supernode.ledger.models import SpendCertificate, SpendVote

# the columns an insert fills: all but the row number
CERT_COLUMNS = tuple(c for c in SpendCertificate.__table__.columns.keys() if c != "id")
VOTE_COLUMNS = tuple(c for c in SpendVote.__table__.columns.keys() if c != "id")
AHEAD_MAX = 10_000  # certificates ahead of a pack's next sequence looked at per apply


async def vote_for(conn: Conn, pack_id: str, sequence: int) -> dict[str, Any] | None:
    cur = sqlite_of(conn).execute(
        "SELECT * FROM spend_votes WHERE pack_id = ? AND sequence = ?", (pack_id, sequence)
    )
    return dict_row(cur)


async def add_vote(conn: Conn, row: dict[str, Any]) -> None:
    sqlite_of(conn).execute(insert_sql("spend_votes", VOTE_COLUMNS), [row[c] for c in VOTE_COLUMNS])


async def certificate_at(conn: Conn, pack_id: str, sequence: int) -> dict[str, Any] | None:
    cur = sqlite_of(conn).execute(
        "SELECT * FROM spend_certificates WHERE pack_id = ? AND sequence = ?", (pack_id, sequence)
    )
    return dict_row(cur)


async def certificates_from(
    conn: Conn, pack_id: str, from_sequence: int, limit: int
) -> list[dict[str, Any]]:
    cur = sqlite_of(conn).execute(
        "SELECT * FROM spend_certificates WHERE pack_id = ? AND sequence >= ?"
        " ORDER BY sequence LIMIT ?",
        (pack_id, from_sequence, limit),
    )
    return dict_rows(cur)


async def add_certificate(conn: Conn, row: dict[str, Any]) -> str:
    """Store a certificate: 'new', 'known' (same order), or 'conflict' (another order
    holds that sequence: a quorum signed two orders, which needs > f faulty members)."""
    db = sqlite_of(conn)
    known = db.execute(
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
    db.execute(
        insert_sql("spend_certificates", CERT_COLUMNS, skip_duplicates=True),
        [values[c] for c in CERT_COLUMNS],
    )
    return "new"


async def apply_ready(conn: Conn, pack_id: str) -> int:
    """Apply the pack's stored certificates from its next sequence on, in order, while
    there is no gap. Returns how many were applied."""
    db = sqlite_of(conn)
    pack = db.execute(
        "SELECT remaining_credits, next_sequence FROM credit_packs WHERE pack_id = ?",
        (pack_id,),
    ).fetchone()
    if pack is None:
        return 0  # the pack's own certificate has not arrived yet: apply later
    remaining, nxt = pack
    ahead = db.execute(
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
        db.executemany("UPDATE spend_certificates SET applied = 1 WHERE id = ?", applied)
        db.execute(
            "UPDATE credit_packs SET remaining_credits = ?, next_sequence = ? WHERE pack_id = ?",
            (remaining, nxt, pack_id),
        )
    await apply_refunds(conn, pack_id)  # refunds wait for their spend
    return len(applied)


async def delegated_spent(conn: Conn, delegation_id: str) -> int:
    """Credits certified so far under one delegation (its running total)."""
    return (
        sqlite_of(conn)
        .execute(
            "SELECT coalesce(sum(amount), 0) FROM spend_certificates WHERE delegation_id = ?",
            (delegation_id,),
        )
        .fetchone()[0]
    )


async def pack_state(conn: Conn, pack_id: str) -> dict[str, Any] | None:
    cur = sqlite_of(conn).execute("SELECT * FROM credit_packs WHERE pack_id = ?", (pack_id,))
    return dict_row(cur)
