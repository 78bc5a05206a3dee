"""A delegate's journal of the requests it answered at once from a reservation, and of
the settlement orders that get them certified in batches (see inference/settlement.py).

A request's row (inference_requests) is written durably, ``settle_state`` "open", before
its answer starts; its run sets ``charged``; a settlement takes the open rows whose
charge is known ("batched"), and once certified they are "settled". The partial index
on ``settle_state`` keeps every query here to the rows still to settle."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from supernode.ledger.db import Record, dict_row, dict_rows, in_chunks

OPEN, BATCHED, SETTLED, REFUSED = "open", "batched", "settled", "refused"
PENDING, CERTIFIED, VOID = "pending", "certified", "void"
ANSWERED = Record("requests answered from a reservation", durable=True)
SETTLEMENTS = Record("settlements", durable=True)
DEAD_RUN = "the daemon stopped during the run; charged its quote (its answer may have gone out)"


def outstanding(conn: sqlite3.Connection) -> dict[str, int]:
    """Per reservation pack: credits answered and not yet certified (a request's charge,
    or its quote while it runs)."""
    cur = conn.execute(
        "SELECT pack_id, sum(coalesce(charged, cost)) FROM inference_requests"
        " WHERE settle_state IN (?, ?) GROUP BY pack_id",
        (OPEN, BATCHED),
    )
    return {pack_id: total for pack_id, total in cur}


def charge_dead_runs(conn: sqlite3.Connection) -> int:
    """At start: requests answered whose run ended with the last process are charged
    their quote (their answer may have gone out, whole or in part)."""
    cur = conn.execute(
        "UPDATE inference_requests SET charged = cost, status = 'failed', error = ?,"
        " updated_at = ? WHERE settle_state = ? AND charged IS NULL",
        (DEAD_RUN, time.time(), OPEN),
    )
    return cur.rowcount


def packs_due(conn: sqlite3.Connection) -> list[str]:
    """Reservation packs with answered requests to settle, or a settlement pending."""
    cur = conn.execute(
        "SELECT DISTINCT pack_id FROM inference_requests WHERE settle_state = ?"
        " AND charged IS NOT NULL UNION SELECT pack_id FROM settlements WHERE state = ?",
        (OPEN, PENDING),
    )
    return [r[0] for r in cur]


def unsettled(conn: sqlite3.Connection, pack_id: str) -> int:
    """How many of the pack's answered requests are not settled yet."""
    return conn.execute(
        "SELECT count(*) FROM inference_requests WHERE settle_state IN (?, ?) AND pack_id = ?",
        (OPEN, BATCHED, pack_id),
    ).fetchone()[0]


def pending(conn: sqlite3.Connection, pack_id: str) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT * FROM settlements WHERE state = ? AND pack_id = ?", (PENDING, pack_id)
    )
    return dict_row(cur)


def settle_free(conn: sqlite3.Connection, pack_id: str) -> int:
    """Requests that cost nothing (their run failed) need no order: settled as they are."""
    cur = conn.execute(
        "UPDATE inference_requests SET settle_state = ? WHERE settle_state = ? AND pack_id = ?"
        " AND charged = 0",
        (SETTLED, OPEN, pack_id),
    )
    return cur.rowcount


def due(conn: sqlite3.Connection, pack_id: str, limit: int) -> list[dict[str, Any]]:
    """The pack's answered requests whose charge is known, oldest first."""
    cur = conn.execute(
        "SELECT request_id, charged FROM inference_requests WHERE settle_state = ?"
        " AND pack_id = ? AND charged IS NOT NULL ORDER BY created_at LIMIT ?",
        (OPEN, pack_id, limit),
    )
    return dict_rows(cur)


def add(conn: sqlite3.Connection, row: dict[str, Any], request_ids: list[str]) -> None:
    """Journal a settlement order and put its requests in it."""
    conn.execute(
        'INSERT INTO settlements (order_id, pack_id, sequence, amount, requests, "order",'
        " state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row["order_id"],
            row["pack_id"],
            row["sequence"],
            row["amount"],
            len(request_ids),
            row["order"],
            PENDING,
            row["created_at"],
        ),
    )
    for chunk, marks in in_chunks(request_ids):
        conn.execute(
            f"UPDATE inference_requests SET settle_state = ?, order_id = ?, sequence = ?"
            f" WHERE request_id IN ({marks})",
            (BATCHED, row["order_id"], row["sequence"], *chunk),
        )


def finish(conn: sqlite3.Connection, order_id: str, certified: bool) -> None:
    """A settlement certified (its requests settled), or void: it can never be certified
    (it expired before any member voted for it), and its requests go in another."""
    now = time.time()
    conn.execute(
        "UPDATE settlements SET state = ?, settled_at = ? WHERE order_id = ?",
        (CERTIFIED if certified else VOID, now, order_id),
    )
    if certified:
        conn.execute(
            "UPDATE inference_requests SET settle_state = ? WHERE settle_state = ?"
            " AND order_id = ?",
            (SETTLED, BATCHED, order_id),
        )
    else:
        conn.execute(
            "UPDATE inference_requests SET settle_state = ?, order_id = NULL, sequence = NULL"
            " WHERE settle_state = ? AND order_id = ?",
            (OPEN, BATCHED, order_id),
        )


def refuse(conn: sqlite3.Connection, order_id: str) -> None:
    """A settlement the federation will never certify (the key ended long ago): void,
    its requests left unpaid (marked, never asked again)."""
    conn.execute(
        "UPDATE settlements SET state = ?, settled_at = ? WHERE order_id = ?",
        (VOID, time.time(), order_id),
    )
    conn.execute(
        "UPDATE inference_requests SET settle_state = ? WHERE settle_state = ? AND order_id = ?",
        (REFUSED, BATCHED, order_id),
    )
