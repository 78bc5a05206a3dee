"""Peers: membership rows, collateral readings, sync cursors, penalties and bans; and the
authentication challenges already answered."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from supernode.ledger.db import Record, dict_rows

PEERS = Record("peer records", durable=True)  # collateral, cursors, penalties, bans
USED_CHALLENGES = Record("answered challenges", durable=True)  # a replay must stay refused


def sync_members(conn: sqlite3.Connection, members: Iterable[dict[str, str]]) -> None:
    """Insert members of the network file; refresh url and key of known ones."""
    conn.executemany(
        "INSERT INTO peers (address, url, public_key, eligible, sync_cursor, penalty_points) "
        "VALUES (?, ?, ?, 0, 0, 0) "
        "ON CONFLICT (address) DO UPDATE SET url = excluded.url, public_key = excluded.public_key",
        [(m["address"], m["url"], m["public_key"]) for m in members],
    )


def all_peers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = dict_rows(conn.execute("SELECT * FROM peers ORDER BY address"))
    for r in rows:
        r["eligible"] = bool(r["eligible"])
    return rows


def set_collateral(
    conn: sqlite3.Connection, address: str, wei: int, eligible: bool, block: int, at: float
) -> None:
    conn.execute(
        "UPDATE peers SET collateral_wei = ?, eligible = ?, collateral_block = ?, "
        "collateral_checked_at = ? WHERE address = ?",
        (str(wei), eligible, block, at, address),
    )


def set_cursor(conn: sqlite3.Connection, address: str, cursor: int) -> None:
    conn.execute("UPDATE peers SET sync_cursor = ? WHERE address = ?", (cursor, address))


def mark_contact(conn: sqlite3.Connection, address: str, at: float, error: str | None) -> None:
    if error is None:
        conn.execute(
            "UPDATE peers SET last_error = NULL, last_seen_at = ? WHERE address = ?", (at, address)
        )
    else:
        conn.execute("UPDATE peers SET last_error = ? WHERE address = ?", (error, address))


def add_penalties(
    conn: sqlite3.Connection,
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
    conn.executemany(
        "INSERT INTO peer_penalties (peer_address, reason, detail, envelope_id, points, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (address, p["reason"], p.get("detail", ""), p.get("envelope_id"), p["points"], now)
            for p in penalties
        ],
    )
    points = conn.execute(
        "SELECT coalesce(sum(points), 0) FROM peer_penalties WHERE peer_address = ? AND at >= ?",
        (address, now - window_s),
    ).fetchone()[0]
    banned_until = now + ban_s if points >= threshold else None
    if banned_until is None:
        conn.execute("UPDATE peers SET penalty_points = ? WHERE address = ?", (points, address))
    else:
        conn.execute(
            "UPDATE peers SET penalty_points = ?, banned_until = ? WHERE address = ?",
            (points, banned_until, address),
        )
    return banned_until


def bans(conn: sqlite3.Connection, now: float) -> dict[str, float]:
    cur = conn.execute("SELECT address, banned_until FROM peers WHERE banned_until > ?", (now,))
    return {r[0]: r[1] for r in cur}


def recent_penalties(
    conn: sqlite3.Connection, address: str | None, limit: int
) -> list[dict[str, Any]]:
    if address:
        cur = conn.execute(
            "SELECT * FROM peer_penalties WHERE peer_address = ? ORDER BY at DESC LIMIT ?",
            (address, limit),
        )
    else:
        cur = conn.execute("SELECT * FROM peer_penalties ORDER BY at DESC LIMIT ?", (limit,))
    return dict_rows(cur)


def use_challenge(
    conn: sqlite3.Connection, challenge_id: str, address: str, expires_at: float
) -> bool:
    """Mark a challenge used; False if it was used before."""
    cur = conn.execute(
        "INSERT INTO used_challenges (challenge_id, address, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (challenge_id, address, expires_at),
    )
    return cur.rowcount == 1


def prune_used_challenges(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("DELETE FROM used_challenges WHERE expires_at < ?", (now,)).rowcount
