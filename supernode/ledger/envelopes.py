"""The seen-envelope log: duplicate filter and anti-entropy source."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.db import Conn, insert_sql, sqlite_of
from supernode.ledger.models import SeenEnvelope

t = SeenEnvelope.__table__

# SQLite allows 32766 bound parameters; stay well under it per IN (...) query.
_IN_CHUNK = 900


async def known_ids(conn: Conn, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` are already in the log (plain SQL: this runs for every batch)."""
    wanted = list(dict.fromkeys(ids))
    db = sqlite_of(conn)
    found: set[str] = set()
    for i in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[i : i + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        cur = db.execute(f"SELECT id FROM seen_envelopes WHERE id IN ({marks})", chunk)
        found.update(r[0] for r in cur)
    return found


_COLUMNS = tuple(c for c in t.columns.keys() if c != "seq")  # seq: the log position


async def insert_envelopes(conn: Conn, rows: Sequence[dict[str, Any]]) -> None:
    """Append envelopes (already checked to be new, in this same write transaction)."""
    if rows:
        sqlite_of(conn).executemany(
            insert_sql("seen_envelopes", _COLUMNS), [[r[c] for c in _COLUMNS] for r in rows]
        )


def _visible_to(for_address: str) -> Any:
    """Broadcasts and envelopes addressed to ``for_address``, not those it handed us."""
    return (
        or_(t.c.recipient.is_(None), t.c.recipient == for_address),
        or_(t.c.received_from.is_(None), t.c.received_from != for_address),
    )


async def ids_after(
    conn: AsyncConnection, after_seq: int, upto_seq: int, for_address: str, limit: int
) -> list[tuple[int, str]]:
    """(log position, id) of the envelopes in (after_seq, upto_seq] that ``for_address``
    may see, oldest first."""
    rows = await conn.execute(
        select(t.c.seq, t.c.id)
        .where(t.c.seq > after_seq)
        .where(t.c.seq <= upto_seq)
        .where(*_visible_to(for_address))
        .order_by(t.c.seq)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]


async def raws_by_id(conn: AsyncConnection, ids: Sequence[str], for_address: str) -> list[bytes]:
    """The stored bytes of those of ``ids`` we hold and ``for_address`` may see, in log
    order."""
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(ids), _IN_CHUNK):
        rows = await conn.execute(
            select(t.c.seq, t.c.raw)
            .where(t.c.id.in_(ids[i : i + _IN_CHUNK]))
            .where(*_visible_to(for_address))
        )
        out.extend((r[0], r[1]) for r in rows)
    return [raw for _, raw in sorted(out)]


async def last_seq(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.coalesce(func.max(t.c.seq), 0)))).scalar_one()


async def count_by_type(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(t.c.type, func.count()).group_by(t.c.type))
    return {r[0]: r[1] for r in rows}


async def prune_expired(conn: AsyncConnection, before: float) -> int:
    """Drop log rows whose envelopes expired before ``before`` and that nothing else
    references; an expired envelope is refused anyway, so the filter no longer needs it."""
    from supernode.ledger.models import Message, UserMessage

    referenced = select(Message.__table__.c.envelope_id).union(
        select(UserMessage.__table__.c.envelope_id)
    )
    result = await conn.execute(
        delete(t).where(t.c.expires_at < before).where(t.c.id.not_in(referenced))
    )
    return result.rowcount or 0
