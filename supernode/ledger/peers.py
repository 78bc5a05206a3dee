"""Peers: membership rows, collateral readings, sync cursors, penalties and bans."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.models import Peer, PeerPenalty, UsedChallenge

p = Peer.__table__
pp = PeerPenalty.__table__
uc = UsedChallenge.__table__


async def sync_members(conn: AsyncConnection, members: Iterable[dict[str, str]]) -> None:
    """Insert members of the network file; refresh url and key of known ones."""
    for mem in members:
        stmt = sqlite_insert(p).values(
            address=mem["address"],
            url=mem["url"],
            public_key=mem["public_key"],
            eligible=False,
            sync_cursor=0,
            penalty_points=0,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["address"],
            set_={"url": stmt.excluded.url, "public_key": stmt.excluded.public_key},
        )
        await conn.execute(stmt)


async def all_peers(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(select(p).order_by(p.c.address))
    return [dict(r._mapping) for r in rows]


async def set_collateral(
    conn: AsyncConnection, address: str, wei: int, eligible: bool, block: int, at: float
) -> None:
    await conn.execute(
        update(p)
        .where(p.c.address == address)
        .values(
            collateral_wei=str(wei),
            eligible=eligible,
            collateral_block=block,
            collateral_checked_at=at,
        )
    )


async def set_cursor(conn: AsyncConnection, address: str, cursor: int) -> None:
    await conn.execute(update(p).where(p.c.address == address).values(sync_cursor=cursor))


async def mark_contact(conn: AsyncConnection, address: str, at: float, error: str | None) -> None:
    values: dict[str, Any] = {"last_error": error}
    if error is None:
        values["last_seen_at"] = at
    await conn.execute(update(p).where(p.c.address == address).values(**values))


async def add_penalties(
    conn: AsyncConnection,
    address: str,
    penalties: list[dict[str, Any]],
    *,
    now: float,
    window_s: int,
    threshold: int,
    ban_s: int,
) -> float | None:
    """Record penalties against ``address``; ban it when the points within the window
    reach the threshold. Returns the ban's end if it is (now) banned."""
    if not penalties:
        return None
    await conn.execute(
        insert(pp), [{**pen, "peer_address": address, "at": now} for pen in penalties]
    )
    points = (
        await conn.execute(
            select(func.coalesce(func.sum(pp.c.points), 0))
            .where(pp.c.peer_address == address)
            .where(pp.c.at >= now - window_s)
        )
    ).scalar_one()
    values: dict[str, Any] = {"penalty_points": points}
    banned_until = None
    if points >= threshold:
        banned_until = now + ban_s
        values["banned_until"] = banned_until
    await conn.execute(update(p).where(p.c.address == address).values(**values))
    return banned_until


async def bans(conn: AsyncConnection, now: float) -> dict[str, float]:
    rows = await conn.execute(select(p.c.address, p.c.banned_until).where(p.c.banned_until > now))
    return {r[0]: r[1] for r in rows}


async def recent_penalties(
    conn: AsyncConnection, address: str | None, limit: int
) -> list[dict[str, Any]]:
    q = select(pp)
    if address:
        q = q.where(pp.c.peer_address == address)
    rows = await conn.execute(q.order_by(pp.c.at.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


async def use_challenge(
    conn: AsyncConnection, challenge_id: str, address: str, expires_at: float
) -> bool:
    """Mark a challenge used; False if it was used before."""
    stmt = (
        sqlite_insert(uc)
        .values(challenge_id=challenge_id, address=address, expires_at=expires_at)
        .on_conflict_do_nothing()
    )
    result = await conn.execute(stmt)
    return bool(result.rowcount)


async def prune_used_challenges(conn: AsyncConnection, now: float) -> int:
    result = await conn.execute(delete(uc).where(uc.c.expires_at < now))
    return result.rowcount or 0
