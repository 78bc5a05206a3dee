"""Epochs on the chain's clock: epoch ``e`` is blocks [e·B, (e+1)·B), and its times are
its boundary blocks' timestamps, which every member reads alike.

An event's time is its envelope's signed ``created_at``. Against the boundaries:
- a request (its result summary) belongs to the epoch whose span holds its time;
- epoch ``e`` is *closed* once block (e + 1 + grace)·B is mined: events of ``e`` signed
  after that block's time never count, wherever they arrive.
Each member reads the head and caches the boundary timestamps (one call per epoch).
"""

from __future__ import annotations

import time

from loguru import logger

from supernode.chain.client import ChainClient
from supernode.errors import ChainError

KEEP_BOUNDARIES = 4096  # cached boundary timestamps (old ones are dropped first)


class EpochClock:
    def __init__(self, chain: ChainClient, epoch_blocks: int, grace_epochs: int) -> None:
        self.chain = chain
        self.blocks = epoch_blocks
        self.grace = grace_epochs
        self.head: int | None = None  # the last block number read
        self.head_time: int | None = None  # and its timestamp
        self.read_at: float | None = None  # when that read began (local time)
        self._starts: dict[int, int] = {}  # epoch -> timestamp of its first block

    # -- reading the chain -------------------------------------------------------------
    async def refresh(self, back: int = 3) -> int | None:
        """Read the head, and the start times of the last ``back`` + 1 epochs."""
        began = time.time()
        try:
            head = await self.chain.block_number()
            head_time = await self.chain.block_timestamp(head)
        except ChainError as exc:
            logger.warning("epoch clock: no head block: {}", exc.detail)
            return self.head
        if self.head is not None and head < self.head:
            return self.head  # an answer older than one we hold (two reads crossed)
        self.head, self.head_time, self.read_at = head, head_time, began
        top = self.head // self.blocks
        for e in range(max(0, top - back), top + 1):
            await self.boundary(e)
        return self.head

    async def boundary(self, epoch: int) -> int | None:
        """The start time of ``epoch`` (fetched once), or None while not mined."""
        if epoch < 0:
            return None
        if epoch in self._starts:
            return self._starts[epoch]
        if self.head is not None and epoch * self.blocks > self.head:
            return None
        try:
            ts = await self.chain.block_timestamp(epoch * self.blocks)
        except ChainError:
            return None
        if ts is not None:
            self.learn(epoch, ts)
        return ts

    def learn(self, epoch: int, start: int) -> None:
        """Remember that ``epoch`` began at ``start`` (a boundary block's timestamp)."""
        self._starts[epoch] = start
        while len(self._starts) > KEEP_BOUNDARIES:
            self._starts.pop(min(self._starts))

    # -- reading the cache (sync: the intake's checks) --------------------------------
    @property
    def epoch(self) -> int | None:
        return None if self.head is None else self.head // self.blocks

    def start(self, epoch: int) -> int | None:
        return self._starts.get(epoch)

    def close_time(self, epoch: int) -> int | None:
        """When ``epoch`` closed (its grace over), or None while it has not."""
        return self._starts.get(epoch + 1 + self.grace)

    def last_closed(self) -> int | None:
        """The newest closed epoch, or None."""
        if self.head is None:
            return None
        e = self.head // self.blocks - 1 - self.grace
        return e if e >= 0 else None

    def epoch_at(self, t: float) -> int | None:
        """The epoch whose span holds time ``t``, or None while the cache cannot be sure:
        ``t`` past the head block's time may belong to an epoch whose first block is not
        mined (or not read) yet. Block times only grow, so ``t`` at or before the head's
        time is settled."""
        top = self.epoch
        if top is None:
            return None
        for e in range(top, max(-1, top - 64), -1):
            s = self._starts.get(e)
            if s is None:
                continue
            if s <= t:
                nxt = self._starts.get(e + 1)
                if nxt is not None:
                    return e if t < nxt else None  # (between boundaries this cache lacks)
                settled = e == top and self.head_time is not None and t <= self.head_time
                return e if settled else None
        return None
