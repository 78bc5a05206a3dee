"""Supernode messages, their metadata tables, and user messages."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from supernode.ledger.db import Record, dict_rows, insert_sql

MESSAGES = Record("messages", durable=True)  # supernode and user messages
BROADCAST = "*"  # receiver key in the metadata tables for a message to every supernode
MESSAGE_COLUMNS = (
    "envelope_id",
    "sending_sn_address",
    "receiving_sn_address",
    "message_type",
    "message_body",
    "signature",
    "timestamp",
    "received_at",
)
USER_MESSAGE_COLUMNS = (
    "envelope_id",
    "from_address",
    "to_address",
    "message_body",
    "relayed_by",
    "timestamp",
    "received_at",
)
# metadata table -> (key columns, count column, bytes column)
METADATA = {
    "message_metadata": (("message_type",), "total_messages", "total_bytes"),
    "message_sender_metadata": (
        ("sending_sn_address",),
        "total_messages_sent",
        "total_data_sent_bytes",
    ),
    "message_receiver_metadata": (
        ("receiving_sn_address",),
        "total_messages_received",
        "total_data_received_bytes",
    ),
    "message_sender_receiver_metadata": (
        ("sending_sn_address", "receiving_sn_address"),
        "total_messages",
        "total_data_bytes",
    ),
}


def _add_counts(
    conn: sqlite3.Connection, table: str, sums: dict[tuple[str, ...], list[int]]
) -> None:
    keys, count_col, bytes_col = METADATA[table]
    columns = (*keys, count_col, bytes_col)
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        f"{count_col} = {count_col} + excluded.{count_col}, "
        f"{bytes_col} = {bytes_col} + excluded.{bytes_col}",
        [(*key, c, b) for key, (c, b) in sums.items()],
    )


def insert_messages(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Store messages and add them to the four metadata tables (one upsert per key)."""
    if not rows:
        return
    conn.executemany(
        insert_sql("messages", MESSAGE_COLUMNS), [[r[c] for c in MESSAGE_COLUMNS] for r in rows]
    )
    sums: dict[str, dict[tuple[str, ...], list[int]]] = {
        t: defaultdict(lambda: [0, 0]) for t in METADATA
    }
    for r in rows:
        size = len(r["message_body"].encode("utf-8"))
        receiver = r["receiving_sn_address"] or BROADCAST
        sender = r["sending_sn_address"]
        for table, key in (
            ("message_metadata", (r["message_type"],)),
            ("message_sender_metadata", (sender,)),
            ("message_receiver_metadata", (receiver,)),
            ("message_sender_receiver_metadata", (sender, receiver)),
        ):
            sums[table][key][0] += 1
            sums[table][key][1] += size
    for table, by_key in sums.items():
        _add_counts(conn, table, by_key)


def recent_messages(
    conn: sqlite3.Connection, since_ts: int, message_type: str | None, limit: int
) -> list[dict[str, Any]]:
    if message_type:
        cur = conn.execute(
            "SELECT * FROM messages WHERE timestamp >= ? AND message_type = ? "
            "ORDER BY timestamp DESC, id DESC LIMIT ?",
            (since_ts, message_type, limit),
        )
    else:
        cur = conn.execute(
            "SELECT * FROM messages WHERE timestamp >= ? ORDER BY timestamp DESC, id DESC LIMIT ?",
            (since_ts, limit),
        )
    return dict_rows(cur)


def metadata(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    names = {
        "by_type": "message_metadata",
        "by_sender": "message_sender_metadata",
        "by_receiver": "message_receiver_metadata",
        "by_sender_receiver": "message_sender_receiver_metadata",
    }
    return {name: dict_rows(conn.execute(f"SELECT * FROM {t}")) for name, t in names.items()}


def insert_user_messages(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.executemany(
            insert_sql("user_messages", USER_MESSAGE_COLUMNS),
            [[r[c] for c in USER_MESSAGE_COLUMNS] for r in rows],
        )


def user_messages_for(conn: sqlite3.Connection, address: str, limit: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM user_messages WHERE from_address = ? OR to_address = ? "
        "ORDER BY timestamp DESC, id DESC LIMIT ?",
        (address, address, limit),
    )
    return dict_rows(cur)
