"""Who counts: eligibility from on-chain collateral, re-read per epoch, and the quorum."""

from __future__ import annotations

import time

from loguru import logger

from supernode.chain.client import ChainClient, ChainError
from supernode.federation.network import NetworkFile
from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger


def quorum(n: int) -> int:
    """Signatures needed among n eligible members: floor(2n/3) + 1."""
    if n < 1:
        raise ValueError("no eligible members")
    return (2 * n) // 3 + 1


def max_faulty(n: int) -> int:
    """Faulty members the quorum tolerates: floor((n - 1) / 3)."""
    return max(0, (n - 1) // 3)


class Membership:
    """Eligibility of every member, kept in memory and in the peers table."""

    def __init__(
        self, network: NetworkFile, chain: ChainClient, db: Ledger, max_age_s: float
    ) -> None:
        self.network = network
        self.chain = chain
        self.db = db
        self.max_age_s = max_age_s
        self.eligible: dict[str, bool] = {m.address: False for m in network.members}
        self.epoch: int | None = None
        self.checked_at: float | None = None
        self.last_error: str | None = None
        self.chain_read_at = 0.0  # when the chain last answered a read of ours

    def eligible_members(self) -> list[str]:
        return [a for a, ok in self.eligible.items() if ok]

    def quorum(self) -> int | None:
        n = len(self.eligible_members())
        return quorum(n) if n else None

    def load(self) -> None:
        with self.db.read() as conn:
            for row in peers_repo.all_peers(conn):
                if row["address"] in self.eligible:
                    self.eligible[row["address"]] = bool(row["eligible"])

    async def refresh(self, *, force: bool = False) -> bool:
        """Re-read collateral when the epoch changed or the reading is stale.
        Returns True if it read the chain."""
        try:
            block = await self.chain.block_number()
        except ChainError as exc:
            self.last_error = str(exc)
            return False
        self.chain_read_at = time.time()
        epoch = block // self.network.epoch_blocks
        stale = self.checked_at is None or time.time() - self.checked_at > self.max_age_s
        if not force and epoch == self.epoch and not stale:
            return False
        readings: dict[str, int] = {}
        try:
            for m in self.network.members:
                readings[m.address] = await self.chain.balance(m.address, block)
        except ChainError as exc:
            self.last_error = str(exc)
            return False
        now = time.time()
        async with self.db.write(peers_repo.PEERS) as conn:
            for addr, wei in readings.items():
                ok = wei >= self.network.min_collateral_wei
                peers_repo.set_collateral(conn, addr, wei, ok, block, now)
        for addr, wei in readings.items():
            ok = wei >= self.network.min_collateral_wei
            if self.eligible.get(addr) != ok or self.epoch is None:
                logger.info(
                    "member {} {} (collateral {} wei, minimum {}, block {}, epoch {})",
                    addr,
                    "eligible" if ok else "NOT eligible",
                    wei,
                    self.network.min_collateral_wei,
                    block,
                    epoch,
                )
            self.eligible[addr] = ok
        self.epoch, self.checked_at, self.last_error = epoch, now, None
        return True
