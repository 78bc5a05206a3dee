"""Per-client rate limits on the anonymous requests that cost the federation something:
handing out and answering challenges, and the requests that make this daemon (or every
member) store a record — price quotes, usage quotes, purchase confirmations, user
messages.

A token bucket per client address and kind (a burst of ``anonymous_burst_s`` seconds'
allowance, refilled continuously); the buckets are kept for at most ``MAX_CLIENTS``
addresses (least recently seen forgotten first), so a flood from many addresses costs
bounded memory. Members' addresses are not limited: a peer is never turned away by this.
Reads (every GET but ``/health`` and ``/ready``) are limited by ``ReadLimit``, before any
route runs.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from supernode.api.deps import ready_node
from supernode.errors import TooManyRequests
from supernode.inference.openai_fields import OpenAIError
from supernode.serve import normalize_ip

MAX_CLIENTS = 100_000  # client addresses whose buckets are remembered


class RateLimiter:
    def __init__(
        self, per_minute: int, burst_s: float = 60.0, max_clients: int = MAX_CLIENTS
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, min(float(per_minute), self.rate * burst_s))
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, client: str, now: float | None = None) -> float:
        """0 if ``client`` may go on now (one token taken); else the seconds to wait."""
        t = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, t))
        tokens = min(self.burst, tokens + (t - at) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait == 0 else tokens, t)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def limited(kind: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency: this client's request of ``kind`` ("challenges" or "writes") is
    within its share, or 429 with Retry-After."""

    async def dep(request: Request) -> None:
        check_rate(request, kind)

    return dep


def check_rate(request: HTTPConnection, kind: str) -> None:
    node = ready_node(request)  # type: ignore[arg-type]
    client = normalize_ip(request.client.host if request.client else "")
    if client in node.connections.trusted:
        return
    wait = request.app.state.rate_limits[kind].take(client)
    if wait > 0:
        raise TooManyRequests(
            f"too many {kind} requests from {client}; try again in {wait:.1f} s",
            retry_after_s=wait,
            reason="rate_limited",
        )


UNLIMITED_READS = frozenset({"/health", "/ready"})  # for monitors: cheap, and never refused


class ReadLimit:
    """An outsider's GET requests, each within its address's share of reads, or 429 with
    Retry-After (in OpenAI's error shape under /v1/) before any route runs."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter, node: Any) -> None:
        self.app, self.limiter, self.node = app, limiter, node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] not in UNLIMITED_READS
        ):
            client = normalize_ip(scope["client"][0] if scope.get("client") else "")
            if client not in self.node.connections.trusted:
                wait = self.limiter.take(client)
                if wait > 0:
                    await _too_many(scope, client, wait)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _too_many(scope: Scope, client: str, wait: float) -> JSONResponse:
    detail = f"too many reads from {client}; try again in {wait:.1f} s"
    headers = {"Retry-After": str(max(1, math.ceil(wait)))}
    if scope["path"].startswith("/v1/"):
        body: dict[str, Any] = OpenAIError(429, detail, code="rate_limit_exceeded").body()
    else:
        body = {"error": "too_many_requests", "detail": detail, "reason": "rate_limited"}
    return JSONResponse(body, status_code=429, headers=headers)
