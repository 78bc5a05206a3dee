"""Reputation events, this member's audit seeds and tasks, and the score tables."""

from __future__ import annotations

import sqlite3
from typing import Any

from supernode.ledger.db import Record, dict_row, dict_rows, insert_sql

# Events: every member holds them (anti-entropy brings back what a crash lost).
EVENTS = Record("reputation events", durable=False)
# Its own seed must survive a crash, or it cannot reveal and is marked for it.
SEEDS = Record("audit seeds", durable=True)
TASKS = Record("audit tasks", durable=False)  # drawn again from the summaries if lost
TABLES = Record("reputation tables", durable=False)  # computed again from the events

EVENT_COLUMNS = (
    "envelope_id",
    "kind",
    "epoch",
    "sender",
    "subject",
    "request_id",
    "value",
    "data",
    "created_at",
)


def add_events(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    conn.executemany(
        insert_sql("reputation_events", EVENT_COLUMNS, skip_duplicates=True),
        [[r[c] for c in EVENT_COLUMNS] for r in rows],
    )


def events_of(
    conn: sqlite3.Connection, epoch: int, kind: str | None = None
) -> list[dict[str, Any]]:
    if kind is None:
        cur = conn.execute(
            "SELECT * FROM reputation_events WHERE epoch = ? ORDER BY envelope_id", (epoch,)
        )
    else:
        cur = conn.execute(
            "SELECT * FROM reputation_events WHERE epoch = ? AND kind = ? ORDER BY envelope_id",
            (epoch, kind),
        )
    return dict_rows(cur)


def events_by(
    conn: sqlite3.Connection, sender: str, epoch: int | None, limit: int
) -> list[dict[str, Any]]:
    """Events a member sent or that name it (as executor or observed peer)."""
    if epoch is None:
        cur = conn.execute(
            "SELECT * FROM reputation_events WHERE sender = ?"
            " ORDER BY epoch DESC, envelope_id LIMIT ?",
            (sender, limit),
        )
        mine = dict_rows(cur)
        return mine
    cur = conn.execute(
        "SELECT * FROM reputation_events WHERE sender = ? AND epoch = ? ORDER BY envelope_id"
        " LIMIT ?",
        (sender, epoch, limit),
    )
    return dict_rows(cur)


def events_about(
    conn: sqlite3.Connection, subject: str, epoch: int, limit: int
) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM reputation_events WHERE epoch = ? AND subject = ?"
        " ORDER BY envelope_id LIMIT ?",
        (epoch, subject, limit),
    )
    return dict_rows(cur)


def commitments(conn: sqlite3.Connection, member: str, epoch: int) -> set[str]:
    cur = conn.execute(
        "SELECT value FROM reputation_events"
        " WHERE sender = ? AND epoch = ? AND kind = 'audit_seed_commit'",
        (member, epoch),
    )
    return {r[0] for r in cur.fetchall()}


def revealed_seed(conn: sqlite3.Connection, member: str, epoch: int) -> str | None:
    row = conn.execute(
        "SELECT value FROM reputation_events"
        " WHERE sender = ? AND epoch = ? AND kind = 'audit_seed_reveal'"
        " ORDER BY envelope_id LIMIT 1",
        (member, epoch),
    ).fetchone()
    return row[0] if row else None


def has_event(conn: sqlite3.Connection, sender: str, epoch: int, kind: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM reputation_events WHERE sender = ? AND epoch = ? AND kind = ? LIMIT 1",
            (sender, epoch, kind),
        ).fetchone()
        is not None
    )


def count_events(conn: sqlite3.Connection, epoch: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM reputation_events WHERE epoch = ?", (epoch,)
    ).fetchone()[0]


def summaries_between(conn: sqlite3.Connection, start: float, end: float) -> list[dict[str, Any]]:
    """Result summaries signed in [start, end): one epoch's requests."""
    cur = conn.execute(
        "SELECT envelope_id, executor, request_id, status, model, result_hash, input_tokens,"
        " output_tokens, created_at FROM inference_results"
        " WHERE created_at >= ? AND created_at < ? ORDER BY envelope_id, request_id",
        (start, end),
    )
    return dict_rows(cur)


def summary_of(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT * FROM inference_results WHERE request_id = ? ORDER BY envelope_id LIMIT 1",
        (request_id,),
    )
    return dict_row(cur)


def summaries_since(conn: sqlite3.Connection, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Summaries stored after row ``after_id`` (the auditor's cursor), oldest first."""
    cur = conn.execute(
        "SELECT id, envelope_id, executor, request_id, status, model, created_at"
        " FROM inference_results WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    )
    return dict_rows(cur)


def summaries_before(conn: sqlite3.Connection, t: float) -> int:
    """The row number below which every summary was signed before ``t`` (where the
    auditor's cursor starts: requests of closed epochs are too late to audit)."""
    row = conn.execute(
        "SELECT min(id) FROM inference_results WHERE created_at >= ?", (t,)
    ).fetchone()
    if row[0] is not None:
        return int(row[0]) - 1
    return conn.execute("SELECT coalesce(max(id), 0) FROM inference_results").fetchone()[0]


def spend_payer(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    """The certified spend of a request: its pack's owner (who paid) and its executor."""
    cur = conn.execute(
        "SELECT c.executor, p.buyer AS owner FROM spend_certificates c JOIN credit_packs p"
        " ON p.pack_id = c.pack_id WHERE c.request_id = ? LIMIT 1",
        (request_id,),
    )
    return dict_row(cur)


# -- this member's seeds and tasks ---------------------------------------------------------


def seed_for(conn: sqlite3.Connection, epoch: int) -> dict[str, Any] | None:
    return dict_row(conn.execute("SELECT * FROM audit_seeds WHERE epoch = ?", (epoch,)))


def add_seed(conn: sqlite3.Connection, epoch: int, seed: str) -> None:
    conn.execute(
        "INSERT INTO audit_seeds (epoch, seed, committed, revealed) VALUES (?, ?, 0, 0)"
        " ON CONFLICT DO NOTHING",
        (epoch, seed),
    )


def mark_seed(conn: sqlite3.Connection, epoch: int, column: str) -> None:
    assert column in ("committed", "revealed")
    conn.execute(f"UPDATE audit_seeds SET {column} = 1 WHERE epoch = ?", (epoch,))


def seeds_to_reveal(conn: sqlite3.Connection, before_epoch: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM audit_seeds WHERE revealed = 0 AND committed = 1 AND epoch < ?"
        " ORDER BY epoch",
        (before_epoch,),
    )
    return dict_rows(cur)


def add_task(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = ("request_id", "executor", "epoch", "state", "attempts", "due_at")
    conn.execute(insert_sql("audit_tasks", cols, skip_duplicates=True), [row[c] for c in cols])


def due_tasks(conn: sqlite3.Connection, now: float, limit: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM audit_tasks WHERE state = 'queued' AND due_at <= ? ORDER BY due_at LIMIT ?",
        (now, limit),
    )
    return dict_rows(cur)


def update_task(conn: sqlite3.Connection, request_id: str, **values: Any) -> None:
    allowed = {"state", "attempts", "due_at", "verdict", "detail"}
    assert set(values) <= allowed
    sets = ", ".join(f"{k} = ?" for k in values)
    conn.execute(
        f"UPDATE audit_tasks SET {sets} WHERE request_id = ?", [*values.values(), request_id]
    )


# -- tables --------------------------------------------------------------------------------


def put_table(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = ("epoch", "tally", "scores", "hash", "events", "computed_at")
    conn.execute(
        f"INSERT OR REPLACE INTO reputation_tables ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?)",
        [row[c] for c in cols],
    )


def get_table(conn: sqlite3.Connection, epoch: int) -> dict[str, Any] | None:
    return dict_row(conn.execute("SELECT * FROM reputation_tables WHERE epoch = ?", (epoch,)))


def latest_table(conn: sqlite3.Connection) -> dict[str, Any] | None:
    return dict_row(
        conn.execute(
            "SELECT * FROM reputation_tables"
            " WHERE epoch = (SELECT max(epoch) FROM reputation_tables)"
        )
    )
