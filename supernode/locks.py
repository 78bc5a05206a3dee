"""Locks by key that exist only while someone holds or waits for them.

A ``defaultdict(asyncio.Lock)`` keyed by pack or purchase grows with every key ever
used; ``KeyedLock`` forgets a key's lock as soon as its last user lets go, so its size is
the number of keys in use right now.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLock:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, users)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (waiting for its other users first)."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __contains__(self, key: str) -> bool:
        """Whether someone holds ``key`` or waits for it now."""
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)
