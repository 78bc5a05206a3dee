"""One inference node as the pool sees it: what every kind of node client does, and the state
the pool keeps per node (its connections, its health, its circuit breaker).

A kind of node is a subclass of ``NodeClient``: ``PetalsNodeClient`` (``petals.py``, the Petals
HTTP/WebSocket API) and ``OpenAINodeClient`` (``openai.py``, an OpenAI-compatible server). A
subclass says where its health answer is and how to read it, and how to make a whole answer
and a stream; the timeouts, the error handling and the breaker are here, the same for all.

A call returns a non-empty answer (or yields chunks), or raises ``NodeFailure`` (the node is at
fault: timeout, connection error, HTTP 5xx, ``"ok": false``, an error event), or raises
``NodeRejected`` (the node refused the request's parameters: a 4xx the caller caused). Empty
output is judged by the pool (``pool.py``), which also picks nodes and fails over. ``score``
(an auditor's check of a claimed output) returns None from a node that cannot score.

Every call goes over aiohttp (httpx cost about 1 ms of CPU per request here; aiohttp has the
WebSocket client too), in two keep-alive sessions per node: ``session`` for the short calls
(whole answers, token counts), at most ``CALL_CONNECTIONS`` connections at once, and
``side_session``, unbounded, for health checks and streams, so that neither ever waits for a
connection behind the other calls (a stream holds its connection for its whole run).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import aiohttp
from loguru import logger

from supernode.petals.client.protocol import (
    Chunk,
    GenerateParams,
    NodeFailure,
    NodeRejected,
    describe,
    judge,
)

T = TypeVar("T")
MAX_MESSAGE_BYTES = 4_000_000  # largest WebSocket message or server-sent event line taken
# An idle keep-alive connection is dropped after this long, below the 5 s of a default
# uvicorn server, so a connection the node is closing is never reused.
KEEPALIVE_S = 4.0
CALL_CONNECTIONS = 64  # whole answers and token counts in flight to one node at once


@dataclass(frozen=True)
class NodeConfig:
    """A node from config: where it is, which API it speaks, its share of the load."""

    url: str  # base URL, no trailing slash
    kind: str = "petals"  # "petals" (Petals HTTP API) or "openai" (OpenAI-compatible server)
    weight: float = 1.0


@dataclass(frozen=True)
class Timeouts:
    request_s: float  # a whole request (and the total wait on a node during one stream)
    connect_s: float  # TCP connect and the WebSocket handshake
    stream_idle_s: float  # the wait for each streamed message
    health_s: float  # a whole health check


@dataclass(frozen=True)
class Answer:
    text: str
    input_tokens: int | None
    output_tokens: int | None


class NodeClient(ABC):
    """A configured node: its keep-alive HTTP sessions, last health, in-flight count, breaker."""

    kind: ClassVar[str]  # the NodeConfig kind this class speaks
    takes_chat: ClassVar[bool] = False  # whether it answers chats (GenerateParams.chat)
    health_path: ClassVar[str]  # GET here says which models the node serves

    def __init__(self, config: NodeConfig, timeouts: Timeouts) -> None:
        if not config.url.startswith(("http://", "https://")) or config.url.endswith("/"):
            raise ValueError(
                f"node URL must be http(s)://host:port without a trailing slash: {config.url!r}"
            )
        if not config.weight > 0:
            raise ValueError(f"node {config.url}: weight must be positive")
        self.config, self.url, self.timeouts = config, config.url, timeouts
        self.session: aiohttp.ClientSession | None = None  # short calls
        self.side_session: aiohttp.ClientSession | None = None  # health checks and streams
        self.healthy = False
        self.models: tuple[str, ...] = ()
        self.limits: dict[str, int] = {}  # max_new_tokens, max_length where health tells
        self.can_score = False  # whether its health answer says it scores claimed outputs
        self.last_check: float | None = None  # wall-clock time of the last health check
        self.inflight = 0
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self.opened_at: float | None = None  # monotonic time the breaker opened
        self.trial = False  # a half-open trial request is running
        self.current_weight = 0.0  # smooth weighted round-robin among equally loaded nodes

    # --- what a kind of node says ---------------------------------------------------------

    @abstractmethod
    def read_health(self, body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
        """(models served, limits) from the health answer; ``NodeFailure`` if unusable."""

    @abstractmethod
    async def _generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        """One whole answer; the caller bounds it by ``request_s``."""

    @abstractmethod
    def _stream(
        self, model: str, prompt: str, params: GenerateParams, clock: WaitClock
    ) -> AsyncIterator[Chunk]:
        """Text chunks (empty ones allowed), every wait on the node through ``clock``."""

    async def tokenize(self, model: str, text: str) -> int | None:
        """The model's own token count of ``text``, or None if this node cannot tell."""
        return None

    async def _score(
        self,
        model: str,
        prompt: str,
        output: str,
        *,
        repetition_penalty: float | None,
        top_k: int | None,
        tolerance: float | None,
        logprobs: int | None = None,
    ) -> dict[str, Any] | None:
        """The node's score answer (see ``score``); the caller bounds it by ``request_s``.
        None: this kind of node cannot score."""
        return None

    async def tokenizer_json(self, model: str) -> str | None:
        """The model's tokenizer.json from this node, or None if it does not share one."""
        return None

    # --- lifecycle and health -------------------------------------------------------------

    def open(self) -> None:
        """Open the node's sessions (in a running event loop)."""
        if self.session is None:
            self.session = self._new_session(CALL_CONNECTIONS)
        if self.side_session is None:
            self.side_session = self._new_session(0)  # 0: no limit

    def _new_session(self, connections: int) -> aiohttp.ClientSession:
        # nodes are reached directly, never through a proxy (aiohttp's trust_env is off)
        return aiohttp.ClientSession(
            base_url=self.url,
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(
                total=self.timeouts.request_s, sock_connect=self.timeouts.connect_s
            ),
        )

    async def close(self) -> None:
        for session in (self.session, self.side_session):
            if session is not None:
                await session.close()
        self.session = self.side_session = None

    def _session(self, side: bool = False) -> aiohttp.ClientSession:
        """The session for short calls, or with ``side`` the one for health and streams."""
        session = self.side_session if side else self.session
        if session is None:
            raise NodeFailure("the pool is not started")
        return session

    async def _get_json(self, path: str, side: bool = False) -> dict[str, Any]:
        async with self._session(side).get(path) as resp:
            return judge(resp.status, await resp.read(), self.url)

    async def check_health(self) -> None:
        """Ask the node what it serves; ``healthy`` and ``models`` follow the answer."""
        was = self.healthy
        try:
            async with asyncio.timeout(self.timeouts.health_s):
                # aiohttp retries a GET once on a kept-alive connection the node was closing
                body = await self._get_json(self.health_path, side=True)
            models, limits = self.read_health(body)
        except (NodeFailure, NodeRejected, aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = describe(exc, self.timeouts.health_s, self.timeouts.connect_s, "health answer")
            self.healthy, self.last_error = False, why
            first = self.last_check is None
            (logger.warning if was or first else logger.debug)(
                "node {} unhealthy: {}", self.url, why
            )
        except Exception as exc:  # a bug here must not stop the health job
            logger.opt(exception=exc).error("node {}: health check broke", self.url)
            self.healthy, self.last_error = False, f"health check broke: {type(exc).__name__}"
        else:
            self.healthy, self.models, self.limits = True, models, limits
            if not was:
                logger.info("node {} healthy, serving {}", self.url, ", ".join(models) or "nothing")
        self.last_check = time.time()

    # --- circuit breaker ------------------------------------------------------------------

    def breaker(self, reset_s: float, now: float | None = None) -> str:
        if self.opened_at is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "open" if now - self.opened_at < reset_s else "half-open"

    def available(self, model: str, reset_s: float, now: float) -> bool:
        """Healthy, serves ``model``, and its breaker lets a request through now."""
        if not self.healthy or model not in self.models:
            return False
        state = self.breaker(reset_s, now)
        return state == "closed" or (state == "half-open" and not self.trial)

    def record_success(self) -> None:
        if self.opened_at is not None:
            logger.info("node {}: trial request succeeded, breaker closed", self.url)
        self.failures, self.opened_at, self.trial = 0, None, False

    def record_failure(self, why: str, threshold: int, reset_s: float) -> None:
        self.failures += 1
        self.last_error = why
        if self.trial:  # the half-open trial failed: open again
            self.opened_at, self.trial = time.monotonic(), False
            logger.warning(
                "node {}: trial request failed, breaker open {} s more", self.url, reset_s
            )
        elif self.opened_at is None and self.failures >= threshold:
            self.opened_at = time.monotonic()
            logger.warning(
                "node {}: breaker opened after {} consecutive failures; trial in {} s",
                self.url,
                self.failures,
                reset_s,
            )

    # --- generation -----------------------------------------------------------------------

    async def generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        """One whole answer, within ``request_s``."""
        try:
            async with asyncio.timeout(self.timeouts.request_s):
                return await self._generate(model, prompt, params)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeFailure(
                describe(exc, self.timeouts.request_s, self.timeouts.connect_s, "answer")
            ) from None

    async def score(
        self,
        model: str,
        prompt: str,
        output: str,
        *,
        repetition_penalty: float | None = None,
        top_k: int | None = None,
        tolerance: float | None = None,
        logprobs: int | None = None,
    ) -> dict[str, Any] | None:
        """How ``model`` scores ``output`` as the continuation of ``prompt`` (in the node's
        low lane), within ``request_s``: the node's answer, ``{"ok": true, "prompt_tokens",
        "tokens", "first_failure", "first_outside_top_k", "end", "positions", ...}``; None
        when this node cannot score. ``tolerance`` None: the node's default. ``logprobs``:
        the answer also lists each token's log-probability and that many alternatives (a
        user's request: in the node's normal lane)."""
        try:
            async with asyncio.timeout(self.timeouts.request_s):
                return await self._score(
                    model,
                    prompt,
                    output,
                    repetition_penalty=repetition_penalty,
                    top_k=top_k,
                    tolerance=tolerance,
                    logprobs=logprobs,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeFailure(
                describe(exc, self.timeouts.request_s, self.timeouts.connect_s, "score answer")
            ) from None

    async def stream(self, model: str, prompt: str, params: GenerateParams) -> AsyncIterator[Chunk]:
        """Non-empty text chunks as the node makes them; each wait at most ``stream_idle_s``,
        all waits together at most ``request_s`` (a slow reader's own time is not counted)."""
        clock = WaitClock(self.timeouts.request_s, self.timeouts.stream_idle_s)
        try:
            async with aclosing(self._stream(model, prompt, params, clock)) as chunks:
                async for chunk in chunks:
                    if chunk:
                        yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = describe(exc, clock.last_limit, self.timeouts.connect_s, "stream message")
            raise NodeFailure(why) from None


class WaitClock:
    """Bounds each wait by ``idle_s`` and the sum of all waits by ``total_s``."""

    def __init__(self, total_s: float, idle_s: float) -> None:
        self.left, self.idle_s = total_s, idle_s
        self.last_limit = idle_s  # the bound of the last wait begun, for error messages

    async def wait(self, aw: Awaitable[T]) -> T:
        if self.left <= 0:
            raise NodeFailure("the stream ran past the request timeout")
        self.last_limit = min(self.idle_s, self.left)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.last_limit):
                return await aw
        finally:
            self.left -= time.monotonic() - started
