"""The seen-envelope log: duplicate filter and anti-entropy source."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from supernode.ledger.db import Record, in_chunks, insert_sql

# the log rows of what was accepted: peers hold every envelope too (anti-entropy brings a
# lost one back); a type's own rows, in the same transaction, say how durable it must be
SEEN = Record("seen envelopes", durable=False)
COLUMNS = (
    "id",
    "type",
    "sender",
    "recipient",
    "created_at",
    "expires_at",
    "received_at",
    "received_from",
    "raw",
)


def known_ids(conn: sqlite3.Connection, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` are already in the log."""
    found: set[str] = set()
    for chunk, marks in in_chunks(list(dict.fromkeys(ids))):
        cur = conn.execute(f"SELECT id FROM seen_envelopes WHERE id IN ({marks})", chunk)
        found.update(r[0] for r in cur)
    return found


def insert_envelopes(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append envelopes (already checked to be new, in this same write transaction)."""
    if rows:
        conn.executemany(
            insert_sql("seen_envelopes", COLUMNS), [[r[c] for c in COLUMNS] for r in rows]
        )


# broadcasts and envelopes addressed to the caller, but not those it handed us
_VISIBLE_TO = (
    "(recipient IS NULL OR recipient = :who) AND (received_from IS NULL OR received_from != :who)"
)


def ids_after(
    conn: sqlite3.Connection, after_seq: int, upto_seq: int, for_address: str, limit: int
) -> list[tuple[int, str]]:
    """(log position, id) of the envelopes in (after_seq, upto_seq] that ``for_address``
    may see, oldest first."""
    cur = conn.execute(
        "SELECT seq, id FROM seen_envelopes WHERE seq > :after AND seq <= :upto AND "
        f"{_VISIBLE_TO} ORDER BY seq LIMIT :limit",
        {"after": after_seq, "upto": upto_seq, "who": for_address, "limit": limit},
    )
    return [(r[0], r[1]) for r in cur]


def raws_by_id(conn: sqlite3.Connection, ids: Sequence[str], for_address: str) -> list[bytes]:
    """The stored bytes of those of ``ids`` we hold and ``for_address`` may see, in log
    order."""
    out: list[tuple[int, bytes]] = []
    for chunk, _ in in_chunks(list(ids)):
        named = {f"i{n}": v for n, v in enumerate(chunk)}
        marks = ", ".join(f":{k}" for k in named)
        cur = conn.execute(
            f"SELECT seq, raw FROM seen_envelopes WHERE id IN ({marks}) AND {_VISIBLE_TO}",
            {**named, "who": for_address},
        )
        out.extend((r[0], r[1]) for r in cur)
    return [raw for _, raw in sorted(out)]


def last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM seen_envelopes").fetchone()[0]


def count_by_type(conn: sqlite3.Connection) -> dict[str, int]:
    cur = conn.execute("SELECT type, count(*) FROM seen_envelopes GROUP BY type")
    return {r[0]: r[1] for r in cur}


def prune_expired(conn: sqlite3.Connection, before: float) -> int:
    """Drop log rows whose envelopes expired before ``before`` and that nothing else
    references; an expired envelope is refused anyway, so the filter no longer needs it."""
    cur = conn.execute(
        "DELETE FROM seen_envelopes WHERE expires_at < ? AND id NOT IN "
        "(SELECT envelope_id FROM messages UNION SELECT envelope_id FROM user_messages)",
        (before,),
    )
    return cur.rowcount
