"""Peer scoring: invalid envelopes cost their deliverer points; enough points ban it."""

from __future__ import annotations

import time
from typing import Any

from loguru import logger

from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger


class PeerScoring:
    def __init__(
        self, db: Ledger, *, points_invalid: int, window_s: int, threshold: int, ban_s: int
    ) -> None:
        self.db = db
        self.points_invalid = points_invalid
        self.window_s = window_s
        self.threshold = threshold
        self.ban_s = ban_s
        self._banned: dict[str, float] = {}

    def load(self) -> None:
        """Bans survive a restart: read the ones still running."""
        with self.db.read() as conn:
            self._banned = peers_repo.bans(conn, time.time())
        for addr, until in self._banned.items():
            logger.warning("peer {} is banned until {:.0f} (from the ledger)", addr, until)

    def banned_until(self, address: str) -> float | None:
        until = self._banned.get(address)
        if until is None:
            return None
        if until <= time.time():
            self._banned.pop(address, None)
            return None
        return until

    async def penalise(self, address: str, rejections: list[dict[str, Any]]) -> float | None:
        """Record one penalty per rejection ({reason, detail, envelope_id})."""
        if not rejections:
            return None
        pens = [
            {
                "reason": r["reason"],
                "detail": r.get("detail", "")[:500],
                "envelope_id": r.get("envelope_id"),
                "points": self.points_invalid,
            }
            for r in rejections
        ]
        async with self.db.write(peers_repo.PEERS) as conn:
            until = peers_repo.add_penalties(
                conn,
                address,
                pens,
                now=time.time(),
                window_s=self.window_s,
                threshold=self.threshold,
                ban_s=self.ban_s,
            )
        for r in rejections:
            logger.warning(
                "peer {} penalised {} points: {} {} (envelope {})",
                address,
                self.points_invalid,
                r["reason"],
                r.get("detail", ""),
                r.get("envelope_id"),
            )
        if until is not None:
            if address not in self._banned:
                logger.error("peer {} BANNED until {:.0f}", address, until)
            self._banned[address] = until
        return until
