"""The score tables: each closed epoch's tally and table, computed from the ledger's
events (rules.py), stored, and computed again when a late event for it arrives.

Epoch ``e``'s tally needs the audit rates of ``e``, which come from the table of epoch
``e - 1 - grace`` (the last one closed when ``e`` began); so tables are computed in epoch
order, and a late event recomputes its epoch and every later one. The timing rules are
applied here on the chain's boundary times (clock.py), never on arrival times.
"""

from __future__ import annotations

import json
import time
from typing import Any

from loguru import logger

from supernode.crypto.canonical import canonical_json
from supernode.ledger import reputation as repo
from supernode.ledger.db import Ledger
from supernode.reputation import rules
from supernode.reputation.clock import EpochClock
from supernode.reputation.events import (
    LIVENESS,
    RATING,
    SEED_COMMIT,
    SEED_REVEAL,
    VERDICT,
    decode,
)


class ReputationBook:
    def __init__(
        self,
        db: Ledger,
        clock: EpochClock,
        members: list[str],
        rules_: rules.ReputationRules,
    ) -> None:
        self.db = db
        self.clock = clock
        self.members = sorted(members)
        self.rules = rules_
        self._dirty_from: int | None = None
        self._tables: dict[int, dict[str, Any]] = {}  # epoch -> scores (recent ones)
        self.computed = 0  # tables computed since start (metrics)
        self._latest: dict[str, Any] | None = None

    # -- what others ask ---------------------------------------------------------------
    def mark_dirty(self, epoch: int) -> None:
        """An event of ``epoch`` arrived: recompute it (if computed) and what follows."""
        if self._dirty_from is None or epoch < self._dirty_from:
            self._dirty_from = epoch

    def scores(self, epoch: int) -> dict[str, Any] | None:
        if epoch in self._tables:
            return self._tables[epoch]
        with self.db.read() as conn:
            row = repo.get_table(conn, epoch)
        if row is None:
            return None
        tbl = json.loads(row["scores"])
        self._remember(epoch, tbl)
        return tbl

    def latest(self) -> dict[str, Any] | None:
        """The table of the last closed epoch computed here, with its hash (kept in memory:
        status answers and the member list read it on every call)."""
        if self._latest is None:
            with self.db.read() as conn:
                row = repo.latest_table(conn)
            if row is None:
                return None
            self._latest = _view(row)
        return self._latest

    def rate_for(self, executor: str, epoch: int) -> int | None:
        """``executor``'s audit rate in ``epoch`` (bps), or None until its source table
        (epoch - 1 - grace) is computed here (100% where no table can exist)."""
        source = epoch - 1 - self.rules.grace_epochs
        if source < 0:
            return rules.audit_rate_bps(0, 0, self.rules)
        tbl = self.scores(source)
        if tbl is None:
            return None
        return rules.rates_from(tbl, self.members, self.rules).get(executor)

    def is_invalid(self, address: str) -> bool:
        """The last table marks ``address`` invalid (failed audits in a row)."""
        row = self.row(address)
        return bool(row and row["invalid"])

    def missed_audits(self, address: str) -> int:
        """Audits ``address`` was assigned and never did, in the last computed epoch."""
        with self.db.read() as conn:
            row = repo.latest_table(conn)
        if row is None:
            return 0
        t = json.loads(row["tally"]).get(address)
        return int(t["audits_missed"]) if t else 0

    def row(self, address: str) -> dict[str, Any] | None:
        latest = self.latest()
        if latest is None:
            return None
        return next((r for r in latest["rows"] if r["address"] == address), None)

    # -- computing ---------------------------------------------------------------------
    async def update(self) -> list[int]:
        """Compute the tables of epochs closed since the last run, and of any epoch a late
        event changed (and those after it). Returns the epochs computed."""
        last = self.clock.last_closed()
        if last is None:
            return []
        with self.db.read() as conn:
            latest = repo.latest_table(conn)
        first = (latest["epoch"] + 1) if latest else max(0, last - self.rules.window_epochs)
        if self._dirty_from is not None:
            first = min(first, self._dirty_from)
            self._dirty_from = None
        done = []
        for e in range(first, last + 1):
            if not await self._compute(e):
                self.mark_dirty(e)  # a boundary is not readable yet: try again next run
                break
            done.append(e)
        return done

    async def _compute(self, epoch: int) -> bool:
        start = await self.clock.boundary(epoch)
        end = await self.clock.boundary(epoch + 1)
        closed = await self.clock.boundary(epoch + 1 + self.rules.grace_epochs)
        if start is None or end is None or closed is None:
            return False
        source = epoch - 1 - self.rules.grace_epochs
        prior = self.scores(source) if source >= 0 else None
        rates = rules.rates_from(prior, self.members, self.rules)
        with self.db.read() as conn:
            rows = [r for r in repo.events_of(conn, epoch) if _counts(r, start, end, closed)]
            summaries = repo.summaries_between(conn, start, end)
            window = {
                e: _tallies(repo.get_table(conn, e))
                for e in range(epoch - self.rules.window_epochs + 1, epoch)
            }
        events = decode(rows)
        with self.db.read() as conn:  # a rating counts once its request ran, by the payer
            events.ratings = [r for r in events.ratings if _paid(conn, r)]
        events.summaries = [
            rules.Summary(
                s["envelope_id"], s["executor"], s["request_id"], s["status"] == "completed"
            )
            for s in summaries
        ]
        tally = rules.tally(events, self.members, rates, self.rules)
        window[epoch] = tally
        tbl = rules.table(epoch, self.members, {e: t for e, t in window.items() if t}, self.rules)
        digest = rules.table_hash(tbl)
        row = {
            "epoch": epoch,
            "tally": canonical_json({m: rules.tally_to_dict(t) for m, t in tally.items()}),
            "scores": canonical_json(tbl),
            "hash": digest,
            "events": len(events),
            "computed_at": time.time(),
        }
        async with self.db.write(repo.TABLES) as conn:
            repo.put_table(conn, row)
        if self._latest is None or epoch >= self._latest["epoch"]:
            self._latest = _view(row)
        self._remember(epoch, tbl)
        self.computed += 1
        logger.info(
            "reputation: epoch {} table {} from {} events ({})",
            epoch,
            digest[:18],
            len(events),
            ", ".join(
                f"{r['address'][:8]}={r['score']}{'!' if r['invalid'] else ''}" for r in tbl["rows"]
            ),
        )
        return True

    def _remember(self, epoch: int, tbl: dict[str, Any]) -> None:
        self._tables[epoch] = tbl
        while len(self._tables) > 2 * self.rules.window_epochs + 8:
            self._tables.pop(min(self._tables))


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": row["epoch"],
        "hash": row["hash"],
        "events": row["events"],
        "computed_at": row["computed_at"],
        **json.loads(row["scores"]),
    }


def _paid(conn: Any, r: rules.Rating) -> bool:
    ran = repo.summary_of(conn, r.request_id)
    paid = repo.spend_payer(conn, r.request_id)
    return (
        ran is not None
        and ran["executor"] == r.executor
        and ran["status"] == "completed"
        and paid is not None
        and paid["owner"] == r.rater
    )


def _tallies(row: dict[str, Any] | None) -> dict[str, rules.Tally]:
    if row is None:
        return {}
    return {m: rules.tally_from_dict(d) for m, d in json.loads(row["tally"]).items()}


def _counts(row: dict[str, Any], start: int, end: int, closed: int) -> bool:
    """The timing rules, on the boundary times: nothing signed after the close counts; a
    seed is committed before its epoch begins and revealed after it ends."""
    t = row["created_at"]
    if t > closed:
        return False
    if row["kind"] == SEED_COMMIT:
        return t <= start
    if row["kind"] == SEED_REVEAL:
        return t >= end
    return row["kind"] in (VERDICT, RATING, LIVENESS)
