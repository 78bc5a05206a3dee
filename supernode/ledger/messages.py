"""Supernode messages, their metadata tables, and user messages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supernode.ledger.models import (
    Message,
    MessageMetadata,
    MessageReceiverMetadata,
    MessageSenderMetadata,
    MessageSenderReceiverMetadata,
    UserMessage,
)

BROADCAST = "*"  # receiver key in the metadata tables for a message to every supernode

m = Message.__table__
um = UserMessage.__table__


async def _add_counts(
    conn: AsyncConnection,
    table: Any,
    keys: Sequence[str],
    count_col: str,
    bytes_col: str,
    sums: dict[tuple[str, ...], list[int]],
) -> None:
    if not sums:
        return
    rows = [
        {**dict(zip(keys, key, strict=True)), count_col: c, bytes_col: b}
        for key, (c, b) in sums.items()
    ]
    stmt = sqlite_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={
            count_col: getattr(table.c, count_col) + stmt.excluded[count_col],
            bytes_col: getattr(table.c, bytes_col) + stmt.excluded[bytes_col],
        },
    )
    await conn.execute(stmt, rows)


async def insert_messages(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Store messages and add them to the four metadata tables (one upsert per key)."""
    if not rows:
        return
    await conn.execute(insert(m), list(rows))
    by_type: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    by_sender: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    by_receiver: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    by_pair: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        size = len(r["message_body"].encode("utf-8"))
        receiver = r["receiving_sn_address"] or BROADCAST
        for acc, key in (
            (by_type, (r["message_type"],)),
            (by_sender, (r["sending_sn_address"],)),
            (by_receiver, (receiver,)),
            (by_pair, (r["sending_sn_address"], receiver)),
        ):
            acc[key][0] += 1
            acc[key][1] += size
    await _add_counts(
        conn, MessageMetadata.__table__, ["message_type"], "total_messages", "total_bytes", by_type
    )
    await _add_counts(
        conn,
        MessageSenderMetadata.__table__,
        ["sending_sn_address"],
        "total_messages_sent",
        "total_data_sent_bytes",
        by_sender,
    )
    await _add_counts(
        conn,
        MessageReceiverMetadata.__table__,
        ["receiving_sn_address"],
        "total_messages_received",
        "total_data_received_bytes",
        by_receiver,
    )
    await _add_counts(
        conn,
        MessageSenderReceiverMetadata.__table__,
        ["sending_sn_address", "receiving_sn_address"],
        "total_messages",
        "total_data_bytes",
        by_pair,
    )


async def recent_messages(
    conn: AsyncConnection, since_ts: int, message_type: str | None, limit: int
) -> list[dict[str, Any]]:
    q = select(m).where(m.c.timestamp >= since_ts)
    if message_type:
        q = q.where(m.c.message_type == message_type)
    rows = await conn.execute(q.order_by(m.c.timestamp.desc(), m.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


async def metadata(conn: AsyncConnection) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, model in (
        ("by_type", MessageMetadata),
        ("by_sender", MessageSenderMetadata),
        ("by_receiver", MessageReceiverMetadata),
        ("by_sender_receiver", MessageSenderReceiverMetadata),
    ):
        rows = await conn.execute(select(model.__table__))
        out[name] = [dict(r._mapping) for r in rows]
    return out


async def insert_user_messages(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(um), list(rows))


async def user_messages_for(
    conn: AsyncConnection, address: str, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(um)
        .where(or_(um.c.from_address == address, um.c.to_address == address))
        .order_by(um.c.timestamp.desc(), um.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]
