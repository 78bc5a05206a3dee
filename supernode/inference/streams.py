"""Fan-out of one run's output to live followers (SSE and WebSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class RequestStream:
    """Fan-out of one run's chunks to live subscribers (SSE / WebSocket), with replay of
    what was produced before they joined."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.done = False
        self.error: str | None = None
        self._cond = asyncio.Condition()

    async def push(self, chunk: str) -> None:
        async with self._cond:
            self.chunks.append(chunk)
            self._cond.notify_all()

    async def close(self, error: str | None = None) -> None:
        async with self._cond:
            self.done, self.error = True, error
            self._cond.notify_all()

    async def follow(self, idle_timeout_s: float) -> AsyncIterator[str]:
        i = 0
        while True:
            async with self._cond:
                if i >= len(self.chunks) and not self.done:
                    await asyncio.wait_for(self._cond.wait(), idle_timeout_s)
                new, done = self.chunks[i:], self.done
            for c in new:
                yield c
            i += len(new)
            if done and i >= len(self.chunks):
                return
