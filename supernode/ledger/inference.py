"""Inference requests this daemon executes, result summaries, refunds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.db import sqlite_of
from supernode.ledger.models import InferenceRequest, InferenceResult, Refund, SpendCertificate

ir = InferenceRequest.__table__
res = InferenceResult.__table__
rf = Refund.__table__
sc = SpendCertificate.__table__

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


async def add_result(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sqlite_insert(res).values(**row).on_conflict_do_nothing())


async def results_for(conn: AsyncConnection, request_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(select(res).where(res.c.request_id == request_id))
    return [dict(r._mapping) for r in rows]


async def add_refund(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    result = await conn.execute(
        sqlite_insert(rf).values(**row, applied=False).on_conflict_do_nothing()
    )
    return bool(result.rowcount)


async def refunded_for(conn: AsyncConnection, request_id: str) -> int:
    q = select(func.coalesce(func.sum(rf.c.amount), 0)).where(rf.c.request_id == request_id)
    return (await conn.execute(q.where(rf.c.applied.is_(True)))).scalar_one()


async def apply_refunds(conn: AsyncConnection, pack_id: str) -> int:
    """Apply refunds whose spend is applied: by its executor, for its request, and never
    more in all than that spend certified. Returns the credits given back."""
    from supernode.ledger.models import CreditPack

    pending = (
        sqlite_of(conn)
        .execute("SELECT 1 FROM refunds WHERE pack_id = ? AND applied = 0 LIMIT 1", (pack_id,))
        .fetchone()
    )
    if pending is None:
        return 0  # the common case, checked cheaply on every certificate applied
    pk = CreditPack.__table__
    rows = await conn.execute(
        select(
            rf,
            sc.c.amount.label("certified"),
            sc.c.executor.label("cert_executor"),
            sc.c.request_id.label("cert_request"),
        )
        .join(sc, (sc.c.pack_id == rf.c.pack_id) & (sc.c.sequence == rf.c.sequence))
        .where(rf.c.pack_id == pack_id)
        .where(rf.c.applied.is_(False))
        .where(sc.c.applied.is_(True))
        .order_by(rf.c.id)
    )
    given = 0
    for r in rows.all():
        m = r._mapping
        if m["executor"] != m["cert_executor"] or m["request_id"] != m["cert_request"]:
            continue  # not this spend's executor or request: never applied
        already = await refunded_for(conn, m["request_id"])
        if already + m["amount"] > m["certified"]:
            continue  # over the certified amount: never applied
        await conn.execute(update(rf).where(rf.c.id == m["id"]).values(applied=True))
        given += m["amount"]
    if given:
        await conn.execute(
            update(pk)
            .where(pk.c.pack_id == pack_id)
            .values(remaining_credits=pk.c.remaining_credits + given)
        )
    return given
