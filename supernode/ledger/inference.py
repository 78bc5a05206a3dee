"""Inference requests this daemon executes, result summaries, refunds."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.db import Conn, dict_row, insert_sql, sqlite_of
from supernode.ledger.models import InferenceRequest, InferenceResult, Refund

ir = InferenceRequest.__table__
REQUEST_COLUMNS = frozenset(ir.columns.keys())
res = InferenceResult.__table__

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


async def add_request(conn: Conn, row: dict[str, Any]) -> None:
    _columns(row)
    sqlite_of(conn).execute(
        insert_sql("inference_requests", tuple(row), skip_duplicates=True), list(row.values())
    )


async def get_request(conn: Conn, request_id: str) -> dict[str, Any] | None:
    cur = sqlite_of(conn).execute(
        "SELECT * FROM inference_requests WHERE request_id = ?", (request_id,)
    )
    return dict_row(cur)


async def prune_quotes(conn: Conn, expired_before: float) -> int:
    """Forget usage quotes never confirmed whose quote expired before ``expired_before``."""
    cur = sqlite_of(conn).execute(
        "DELETE FROM inference_requests WHERE status = ? AND quote_expires_at < ?",
        (QUOTED, expired_before),
    )
    return cur.rowcount


@cache
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE inference_requests SET {sets} WHERE request_id = ?"


async def update_request(conn: Conn, request_id: str, **values: Any) -> None:
    _columns(values)
    sqlite_of(conn).execute(_update_sql(tuple(values)), [*values.values(), request_id])


RESULT_COLUMNS = tuple(c for c in res.columns.keys() if c != "id")  # "id" is the row number
REFUND_COLUMNS = tuple(c for c in Refund.__table__.columns.keys() if c != "id")


# Result summaries and refunds arrive with every request at every member: plain SQL on the
# transaction's sqlite3 connection, as for spends (see ledger/db.py).
async def add_result(conn: Conn, row: dict[str, Any]) -> None:
    sqlite_of(conn).execute(
        insert_sql("inference_results", RESULT_COLUMNS, skip_duplicates=True),
        [row[c] for c in RESULT_COLUMNS],
    )


async def results_for(conn: AsyncConnection, request_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(select(res).where(res.c.request_id == request_id))
    return [dict(r._mapping) for r in rows]


async def add_refund(conn: Conn, row: dict[str, Any]) -> bool:
    values = {**row, "applied": 0}
    cur = sqlite_of(conn).execute(
        insert_sql("refunds", REFUND_COLUMNS, skip_duplicates=True),
        [values[c] for c in REFUND_COLUMNS],
    )
    return bool(cur.rowcount)


async def refunded_for(conn: Conn, request_id: str) -> int:
    return (
        sqlite_of(conn)
        .execute(
            "SELECT coalesce(sum(amount), 0) FROM refunds WHERE request_id = ? AND applied = 1",
            (request_id,),
        )
        .fetchone()[0]
    )


async def apply_refunds(conn: Conn, pack_id: str) -> int:
    """Apply refunds whose spend is applied: by its executor, for its request, and never
    more in all than that spend certified. Returns the credits given back."""
    db = sqlite_of(conn)
    rows = db.execute(
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
        if await refunded_for(conn, request_id) + amount > certified:
            continue  # over the certified amount: never applied
        db.execute("UPDATE refunds SET applied = 1 WHERE id = ?", (refund_id,))
        given += amount
    if given:
        db.execute(
            "UPDATE credit_packs SET remaining_credits = remaining_credits + ? WHERE pack_id = ?",
            (given, pack_id),
        )
    return given
