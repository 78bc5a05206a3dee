"""Credit-pack purchases, payments used, and certified packs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.models import CreditPack, CreditPurchase, PaymentUsed

cp = CreditPurchase.__table__
pu = PaymentUsed.__table__
pk = CreditPack.__table__

QUOTED, PENDING, CERTIFIED, REFUSED = "quoted", "pending", "certified", "refused"


def _row(r: Any) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


async def get_purchase(conn: AsyncConnection, purchase_id: str) -> dict[str, Any] | None:
    return _row((await conn.execute(select(cp).where(cp.c.purchase_id == purchase_id))).first())


async def add_quote(
    conn: AsyncConnection, terms: dict[str, Any], quote_json: bytes, now: float
) -> None:
    """Record a quote (status `quoted`) unless the purchase is known already."""
    stmt = (
        sqlite_insert(cp)
        .values(
            purchase_id=terms["purchase_id"],
            buyer=terms["buyer"],
            credits=terms["credits"],
            amount_wei=str(terms["amount_wei"]),
            expiry_block=terms["expiry_block"],
            quote=quote_json,
            status=QUOTED,
            confirming=False,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    await conn.execute(stmt)


async def prune_unpaid_quotes(conn: AsyncConnection, before_block: int) -> int:
    """Forget quotes nobody acted on that expired before ``before_block`` (a late buyer
    sends its signed quote along with its confirmation)."""
    result = await conn.execute(
        delete(cp)
        .where(cp.c.status == QUOTED)
        .where(cp.c.confirming.is_(False))
        .where(cp.c.expiry_block < before_block)
    )
    return result.rowcount or 0


async def set_status(
    conn: AsyncConnection,
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
    await conn.execute(
        update(cp)
        .where(cp.c.purchase_id == purchase_id)
        .where(cp.c.status != CERTIFIED)
        .values(**values)
    )


async def confirming_pending(conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(cp)
        .where(cp.c.status == PENDING)
        .where(cp.c.confirming.is_(True))
        .order_by(cp.c.updated_at)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def payment_user(conn: AsyncConnection, chain_id: int, tx_hash: str) -> str | None:
    row = (
        await conn.execute(
            select(pu.c.purchase_id).where(pu.c.chain_id == chain_id).where(pu.c.tx_hash == tx_hash)
        )
    ).first()
    return row[0] if row else None


async def bind_payment(
    conn: AsyncConnection, chain_id: int, tx_hash: str, purchase_id: str, now: float
) -> str:
    """Bind the transaction to the purchase if it is free; returns the purchase it is
    bound to (this one, or the one that used it first). Call in a write transaction."""
    await conn.execute(
        sqlite_insert(pu)
        .values(chain_id=chain_id, tx_hash=tx_hash, purchase_id=purchase_id, at=now)
        .on_conflict_do_nothing()
    )
    bound = await payment_user(conn, chain_id, tx_hash)
    assert bound is not None
    return bound


async def add_pack(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """Store a certified pack once; False if it was known."""
    result = await conn.execute(sqlite_insert(pk).values(**row).on_conflict_do_nothing())
    return bool(result.rowcount)


async def get_pack(conn: AsyncConnection, pack_id: str) -> dict[str, Any] | None:
    return _row((await conn.execute(select(pk).where(pk.c.pack_id == pack_id))).first())


async def pack_by_tx(conn: AsyncConnection, tx_hash: str) -> dict[str, Any] | None:
    return _row((await conn.execute(select(pk).where(pk.c.tx_hash == tx_hash))).first())


async def packs_for(conn: AsyncConnection, buyer: str) -> list[dict[str, Any]]:
    rows = await conn.execute(select(pk).where(pk.c.buyer == buyer).order_by(pk.c.certified_at))
    return [dict(r._mapping) for r in rows]
