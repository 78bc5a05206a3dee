"""Credit-pack purchases, payments used, and certified packs."""

from __future__ import annotations

import sqlite3
from typing import Any

from supernode.ledger.db import Record, dict_row, dict_rows, insert_sql
from supernode.ledger.models import CreditPack

PURCHASES = Record("purchases and quotes", durable=True)
PAYMENTS = Record("payments used", durable=True)  # a transaction pays for one pack, ever
PACKS = Record("certified packs", durable=True)
PACK_COLUMNS = frozenset(CreditPack.__table__.columns.keys())

QUOTED, PENDING, CERTIFIED, REFUSED = "quoted", "pending", "certified", "refused"


def _purchase(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        row["confirming"] = bool(row["confirming"])
    return row


def get_purchase(conn: sqlite3.Connection, purchase_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM credit_purchases WHERE purchase_id = ?", (purchase_id,))
    return _purchase(dict_row(cur))


def add_quote(
    conn: sqlite3.Connection, terms: dict[str, Any], quote_json: bytes, now: float
) -> None:
    """Record a quote (status `quoted`) unless the purchase is known already."""
    conn.execute(
        "INSERT INTO credit_purchases (purchase_id, buyer, credits, amount_wei, expiry_block, "
        "quote, status, confirming, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT DO NOTHING",
        (
            terms["purchase_id"],
            terms["buyer"],
            terms["credits"],
            str(terms["amount_wei"]),
            terms["expiry_block"],
            quote_json,
            QUOTED,
            now,
            now,
        ),
    )


def prune_unpaid_quotes(conn: sqlite3.Connection, before_block: int) -> int:
    """Forget quotes nobody acted on that expired before ``before_block`` (a late buyer
    sends its signed quote along with its confirmation)."""
    cur = conn.execute(
        "DELETE FROM credit_purchases WHERE status = ? AND NOT confirming AND expiry_block < ?",
        (QUOTED, before_block),
    )
    return cur.rowcount


def set_status(
    conn: sqlite3.Connection,
    purchase_id: str,
    status: str,
    *,
    now: float,
    tx_hash: str | None = None,
    detail: str | None = None,
    confirming: bool | None = None,
) -> None:
    """Move a purchase on; a certified purchase stays certified."""
    values: dict[str, Any] = {"status": status, "detail": detail, "updated_at": now}
    if tx_hash is not None:
        values["tx_hash"] = tx_hash
    if confirming is not None:
        values["confirming"] = confirming
    sets = ", ".join(f"{k} = :{k}" for k in values)  # keys are this function's own
    conn.execute(
        f"UPDATE credit_purchases SET {sets} WHERE purchase_id = :pid AND status != :certified",
        {**values, "pid": purchase_id, "certified": CERTIFIED},
    )


def confirming_pending(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM credit_purchases WHERE status = ? AND confirming "
        "ORDER BY updated_at LIMIT ?",
        (PENDING, limit),
    )
    return [_purchase(r) for r in dict_rows(cur)]  # type: ignore[misc]


def payment_user(conn: sqlite3.Connection, chain_id: int, tx_hash: str) -> str | None:
    row = conn.execute(
        "SELECT purchase_id FROM payments_used WHERE chain_id = ? AND tx_hash = ?",
        (chain_id, tx_hash),
    ).fetchone()
    return row[0] if row else None


def bind_payment(
    conn: sqlite3.Connection, chain_id: int, tx_hash: str, purchase_id: str, now: float
) -> str:
    """Bind the transaction to the purchase if it is free; returns the purchase it is
    bound to (this one, or the one that used it first). Call in a write transaction."""
    conn.execute(
        "INSERT INTO payments_used (chain_id, tx_hash, purchase_id, at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (chain_id, tx_hash, purchase_id, now),
    )
    bound = payment_user(conn, chain_id, tx_hash)
    assert bound is not None
    return bound


def add_pack(conn: sqlite3.Connection, row: dict[str, Any]) -> bool:
    """Store a certified pack once; False if it was known."""
    unknown = set(row) - PACK_COLUMNS
    if unknown:  # column names are spliced into the SQL: only the table's own
        raise ValueError(f"not columns of credit_packs: {sorted(unknown)}")
    cur = conn.execute(insert_sql("credit_packs", tuple(row), True), list(row.values()))
    return cur.rowcount == 1


def get_pack(conn: sqlite3.Connection, pack_id: str) -> dict[str, Any] | None:
    return dict_row(conn.execute("SELECT * FROM credit_packs WHERE pack_id = ?", (pack_id,)))


def pack_by_tx(conn: sqlite3.Connection, tx_hash: str) -> dict[str, Any] | None:
    return dict_row(conn.execute("SELECT * FROM credit_packs WHERE tx_hash = ?", (tx_hash,)))


def packs_for(conn: sqlite3.Connection, buyer: str) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM credit_packs WHERE buyer = ? ORDER BY certified_at", (buyer,))
    return dict_rows(cur)
