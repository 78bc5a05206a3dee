"""Inference requests this daemon executes, result summaries, refunds."""

from __future__ import annotations

import sqlite3
from functools import cache
from typing import Any

from supernode.ledger.db import Record, dict_row, dict_rows, insert_sql
from supernode.ledger.models import InferenceRequest, InferenceResult, Refund

ir = InferenceRequest.__table__
REQUEST_COLUMNS = frozenset(ir.columns.keys())
res = InferenceResult.__table__

USAGE_QUOTES = Record("usage quotes", durable=False)  # asked again if lost
CERTIFIED_REQUESTS = Record("requests certified", durable=True)
# a certified request's progress (running, completed or failed without a refund): a lost
# update leaves it certified, and it can run again
REQUEST_PROGRESS = Record("request progress", durable=False)
RESULT_SUMMARIES = Record("result summaries", durable=False)  # every member holds them
REFUNDS = Record("refunds", durable=True)  # credits given back: never twice

QUOTED, CERTIFIED, RUNNING, COMPLETED, FAILED = (
    "quoted",
    "certified",
    "running",
    "completed",
    "failed",
)


# Every request runs these on its executor: plain SQL, as for spends (see ledger/db.py).
def _columns(names: Any) -> None:
    unknown = set(names) - REQUEST_COLUMNS
    if unknown:  # column names are spliced into the SQL: only the table's own
        raise ValueError(f"not columns of inference_requests: {sorted(unknown)}")


def add_request(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    _columns(row)
    conn.execute(
        insert_sql("inference_requests", tuple(row), skip_duplicates=True), list(row.values())
    )


def get_request(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM inference_requests WHERE request_id = ?", (request_id,))
    return dict_row(cur)


def prune_quotes(conn: sqlite3.Connection, expired_before: float) -> int:
    """Forget usage quotes never confirmed whose quote expired before ``expired_before``."""
    cur = conn.execute(
        "DELETE FROM inference_requests WHERE status = ? AND quote_expires_at < ?",
        (QUOTED, expired_before),
    )
    return cur.rowcount


@cache
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE inference_requests SET {sets} WHERE request_id = ?"


def update_request(conn: sqlite3.Connection, request_id: str, **values: Any) -> None:
    _columns(values)
    conn.execute(_update_sql(tuple(values)), [*values.values(), request_id])


RESULT_COLUMNS = tuple(c for c in res.columns.keys() if c != "id")  # "id" is the row number
REFUND_COLUMNS = tuple(c for c in Refund.__table__.columns.keys() if c != "id")


# Result summaries and refunds arrive with every request at every member: plain SQL on the
# transaction's sqlite3 connection, as for spends (see ledger/db.py).
def add_result(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    conn.execute(
        insert_sql("inference_results", RESULT_COLUMNS, skip_duplicates=True),
        [row[c] for c in RESULT_COLUMNS],
    )


def results_for(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM inference_results WHERE request_id = ?", (request_id,))
    return dict_rows(cur)


def add_refund(conn: sqlite3.Connection, row: dict[str, Any]) -> bool:
    values = {**row, "applied": 0}
    cur = conn.execute(
        insert_sql("refunds", REFUND_COLUMNS, skip_duplicates=True),
        [values[c] for c in REFUND_COLUMNS],
    )
    return bool(cur.rowcount)


def refunded_for(conn: sqlite3.Connection, request_id: str) -> int:
    return conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM refunds WHERE request_id = ? AND applied = 1",
        (request_id,),
    ).fetchone()[0]


def apply_refunds(conn: sqlite3.Connection, pack_id: str) -> int:
    """Apply refunds whose spend is applied: by its executor, for its request, and never
    more in all than that spend certified. Returns the credits given back."""
    rows = conn.execute(
        "SELECT r.id, r.request_id, r.executor, r.amount,"
        " c.amount, c.executor, c.request_id"
        " FROM refunds r JOIN spend_certificates c"
        " ON c.pack_id = r.pack_id AND c.sequence = r.sequence"
        " WHERE r.pack_id = ? AND r.applied = 0 AND c.applied = 1 ORDER BY r.id",
        (pack_id,),
    ).fetchall()
    given = 0
    for refund_id, request_id, executor, amount, certified, cert_executor, cert_request in rows:
        if executor != cert_executor or request_id != cert_request:
            continue  # not this spend's executor or request: never applied
        if refunded_for(conn, request_id) + amount > certified:
            continue  # over the certified amount: never applied
        conn.execute("UPDATE refunds SET applied = 1 WHERE id = ?", (refund_id,))
        given += amount
    if given:
        conn.execute(
            "UPDATE credit_packs SET remaining_credits = remaining_credits + ? WHERE pack_id = ?",
            (given, pack_id),
        )
    return given
