"""Spend votes and certificates, and applying certificates to packs in sequence order."""

from __future__ import annotations

from typing import Any

from loguru import logger
from sqlalchemy import func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.inference import apply_refunds
from supernode.ledger.models import CreditPack, SpendCertificate, SpendVote

sv = SpendVote.__table__
sc = SpendCertificate.__table__
pk = CreditPack.__table__


async def vote_for(conn: AsyncConnection, pack_id: str, sequence: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(sv).where(sv.c.pack_id == pack_id).where(sv.c.sequence == sequence)
        )
    ).first()
    return dict(row._mapping) if row else None


async def add_vote(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sv.insert().values(**row))


async def certificate_at(
    conn: AsyncConnection, pack_id: str, sequence: int
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(sc).where(sc.c.pack_id == pack_id).where(sc.c.sequence == sequence)
        )
    ).first()
    return dict(row._mapping) if row else None


async def certificates_from(
    conn: AsyncConnection, pack_id: str, from_sequence: int, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(sc)
        .where(sc.c.pack_id == pack_id)
        .where(sc.c.sequence >= from_sequence)
        .order_by(sc.c.sequence)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def add_certificate(conn: AsyncConnection, row: dict[str, Any]) -> str:
    """Store a certificate: 'new', 'known' (same order), or 'conflict' (another order
    holds that sequence: a quorum signed two orders, which needs > f faulty members)."""
    known = await certificate_at(conn, row["pack_id"], row["sequence"])
    if known is not None:
        if known["order_id"] == row["order_id"]:
            return "known"
        logger.critical(
            "CONFLICTING spend certificates for pack {} sequence {}: {} and {}",
            row["pack_id"],
            row["sequence"],
            known["order_id"],
            row["order_id"],
        )
        return "conflict"
    await conn.execute(sqlite_insert(sc).values(**row, applied=False).on_conflict_do_nothing())
    return "new"


async def apply_ready(conn: AsyncConnection, pack_id: str) -> int:
    """Apply the pack's stored certificates from its next sequence on, in order, while
    there is no gap. Returns how many were applied."""
    pack = (await conn.execute(select(pk).where(pk.c.pack_id == pack_id))).first()
    if pack is None:
        return 0  # the pack's own certificate has not arrived yet: apply later
    remaining, nxt = pack.remaining_credits, pack.next_sequence
    applied = 0
    while True:
        cert = await certificate_at(conn, pack_id, nxt)
        if cert is None:
            break
        if not cert["applied"]:
            if cert["amount"] > remaining:
                logger.critical(
                    "certificate {} spends {} of pack {} holding {}: not applied",
                    cert["order_id"],
                    cert["amount"],
                    pack_id,
                    remaining,
                )
                break
            remaining -= cert["amount"]
            await conn.execute(update(sc).where(sc.c.id == cert["id"]).values(applied=True))
            applied += 1
        nxt += 1
    if applied or nxt != pack.next_sequence:
        await conn.execute(
            update(pk)
            .where(pk.c.pack_id == pack_id)
            .values(remaining_credits=remaining, next_sequence=nxt)
        )
    await apply_refunds(conn, pack_id)  # refunds wait for their spend
    return applied


async def delegated_spent(conn: AsyncConnection, delegation_id: str) -> int:
    """Credits certified so far under one delegation (its running total)."""
    q = select(func.coalesce(func.sum(sc.c.amount), 0)).where(sc.c.delegation_id == delegation_id)
    return (await conn.execute(q)).scalar_one()


async def pack_state(conn: AsyncConnection, pack_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(pk).where(pk.c.pack_id == pack_id))).first()
    return dict(row._mapping) if row else None
