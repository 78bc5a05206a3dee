"""Inference requests this daemon executes, result summaries, refunds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.db import insert_sql, sqlite_of
from supernode.ledger.models import InferenceRequest, InferenceResult

ir = InferenceRequest.__table__
res = InferenceResult.__table__

QUOTED, CERTIFIED, RUNNING, COMPLETED, FAILED = (
    "quoted",
    "certified",
    "running",
    "completed",
    "failed",
)


async def add_request(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sqlite_insert(ir).values(**row).on_conflict_do_nothing())


async def get_request(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(ir).where(ir.c.request_id == request_id))).first()
    return dict(row._mapping) if row else None


async def update_request(conn: AsyncConnection, request_id: str, **values: Any) -> None:
    await conn.execute(update(ir).where(ir.c.request_id == request_id).values(**values))


RESULT_COLUMNS = (
    "envelope_id",
    "request_id",
    "executor",
    "model",
    "status",
    "result_hash",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "node_url",
    "received_at",
)
REFUND_COLUMNS = (
    "envelope_id",
    "pack_id",
    "sequence",
    "request_id",
    "executor",
    "amount",
    "reason",
    "applied",
    "received_at",
)


# Result summaries and refunds arrive with every request at every member: plain SQL on the
# transaction's sqlite3 connection, as for spends (see ledger/db.py).
async def add_result(conn: AsyncConnection, row: dict[str, Any]) -> None:
    sqlite_of(conn).execute(
        insert_sql("inference_results", RESULT_COLUMNS, skip_duplicates=True),
        [row[c] for c in RESULT_COLUMNS],
    )


async def results_for(conn: AsyncConnection, request_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(select(res).where(res.c.request_id == request_id))
    return [dict(r._mapping) for r in rows]


async def add_refund(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    values = {**row, "applied": 0}
    cur = sqlite_of(conn).execute(
        insert_sql("refunds", REFUND_COLUMNS, skip_duplicates=True),
        [values[c] for c in REFUND_COLUMNS],
    )
    return bool(cur.rowcount)


async def refunded_for(conn: AsyncConnection, request_id: str) -> int:
    return (
        sqlite_of(conn)
        .execute(
            "SELECT coalesce(sum(amount), 0) FROM refunds WHERE request_id = ? AND applied = 1",
            (request_id,),
        )
        .fetchone()[0]
    )


async def apply_refunds(conn: AsyncConnection, pack_id: str) -> int:
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
