"""HTTP to one peer: a keep-alive aiohttp session with a bounded connection pool.

Peer fan-out (gossip pushes, vote requests, pulls) is this daemon's hottest client path.
Measured here (shared/notes/performance-limits.md), httpx costs about 1 ms of CPU per
request and degrades with many requests in flight on one client; aiohttp does the same
work for a fraction of that. Every call has a timeout; failures of the transport are one
exception type, ``PeerUnreachable`` (a ``PeerError``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp


class PeerError(Exception):
    """A peer did not give a usable answer."""


class PeerUnreachable(PeerError):
    """No HTTP answer: connection refused or dropped, or the timeout passed."""


@dataclass(frozen=True)
class PeerResponse:
    status: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class PeerHTTP:
    """One peer's session; created on first use (aiohttp needs a running loop)."""

    def __init__(self, *, max_connections: int = 8, keepalive_s: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _get(self) -> aiohttp.ClientSession:
        if self._closed:
            raise PeerUnreachable("the client is closed (the daemon is stopping)")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, keepalive_timeout=self.keepalive_s
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout_s: float,
        body: bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> PeerResponse:
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            async with self._get().request(
                method,
                url,
                data=body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                return PeerResponse(resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def post(self, url: str, body: bytes, *, timeout_s: float) -> PeerResponse:
        return await self.request("POST", url, body=body, timeout_s=timeout_s)

    async def get(self, url: str, params: dict[str, Any], *, timeout_s: float) -> PeerResponse:
        return await self.request("GET", url, params=params, timeout_s=timeout_s)

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
