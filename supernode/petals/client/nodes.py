"""One inference node as the pool sees it: its connections, its health and its circuit breaker.

Two kinds of node:

- ``petals``: the Petals HTTP API as chat.petals.dev has it: ``POST /api/v1/generate`` (form
  fields) for a whole answer, the WebSocket ``/api/v2/generate`` for a stream, and ``GET
  /health`` for the models it serves;
- ``openai``: an OpenAI-compatible server: ``GET /v1/models``, ``POST /v1/completions`` (streamed
  as server-sent events with ``"stream": true``).

A call here returns a non-empty answer (or yields chunks), or raises ``NodeFailure`` (the node
is at fault: timeout, connection error, HTTP 5xx, ``"ok": false``, an error event), or raises
``NodeRejected`` (the node refused the request's parameters: a 4xx the caller caused). Empty
output is judged by the pool (``pool.py``), which also picks nodes and fails over. The bodies
sent and the reading of answers are in ``protocol.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from supernode.petals.client.protocol import (
    GenerateParams,
    NodeFailure,
    NodeRejected,
    choice_text,
    describe,
    error_text,
    int_or_none,
    judge,
    judge_event,
    judge_response,
    openai_body,
    parse_json,
    petals_fields,
    read_health,
)

T = TypeVar("T")
KINDS = ("petals", "openai")
MAX_MESSAGE_BYTES = 4_000_000  # largest WebSocket message taken from a node
# An idle keep-alive connection is dropped after this long, below the 5 s of a default
# uvicorn server, so a connection the node is closing is never reused.
KEEPALIVE_S = 4.0
TOKENIZE_TIMEOUT_S = 5.0  # a tokenizer answer (the caller over-estimates without one)
TOKENIZER_FETCH_TIMEOUT_S = 30.0  # a model's whole tokenizer.json (megabytes for big ones)
TOKENIZER_MAX_BYTES = 64_000_000


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


class Node:
    """A configured node: one keep-alive HTTP client, last health, in-flight count, breaker."""

    def __init__(self, config: NodeConfig, timeouts: Timeouts) -> None:
        if config.kind not in KINDS:
            raise ValueError(f"node {config.url}: kind must be one of {KINDS}, not {config.kind!r}")
        if not config.url.startswith(("http://", "https://")) or config.url.endswith("/"):
            raise ValueError(
                f"node URL must be http(s)://host:port without a trailing slash: {config.url!r}"
            )
        if not config.weight > 0:
            raise ValueError(f"node {config.url}: weight must be positive")
        self.config, self.url, self.timeouts = config, config.url, timeouts
        self.client: httpx.AsyncClient | None = None
        # the hot calls (generate, tokenize) go over aiohttp: httpx costs about 1 ms of CPU
        # per request here
        self.session: aiohttp.ClientSession | None = None
        self.sockets: set[ClientConnection] = set()
        self.healthy = False
        self.models: tuple[str, ...] = ()
        self.limits: dict[str, int] = {}  # max_new_tokens, max_length where /health tells
        self.last_check: float | None = None  # wall-clock time of the last health check
        self.inflight = 0
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self.opened_at: float | None = None  # monotonic time the breaker opened
        self.trial = False  # a half-open trial request is running
        self.current_weight = 0.0  # smooth weighted round-robin among equally loaded nodes

    # --- lifecycle and health ----------------------------------------------------------

    def open(self) -> None:
        if self.client is None:
            self.client = httpx.AsyncClient(
                base_url=self.url,
                timeout=httpx.Timeout(self.timeouts.request_s, connect=self.timeouts.connect_s),
                trust_env=False,  # nodes are reached directly, never through a proxy
            )
        if self.session is None:
            self.session = aiohttp.ClientSession(
                base_url=self.url,
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(
                    total=self.timeouts.request_s, sock_connect=self.timeouts.connect_s
                ),
            )

    async def close(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        self.sockets.clear()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            raise NodeFailure("the pool is not started")
        return self.client

    async def check_health(self) -> None:
        """Ask the node what it serves; ``healthy`` and ``models`` follow the answer."""
        path = "/health" if self.config.kind == "petals" else "/v1/models"
        was = self.healthy
        try:
            async with asyncio.timeout(self.timeouts.health_s):
                try:
                    resp = await self._client().get(path)
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    # a kept-alive connection the node was just closing: one fresh try
                    resp = await self._client().get(path)
            body = judge_response(resp, self.url)
            models, limits = read_health(body, self.config.kind)
        except (NodeFailure, NodeRejected, httpx.HTTPError, OSError, TimeoutError) as exc:
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

    # --- circuit breaker ----------------------------------------------------------------

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

    # --- generation ---------------------------------------------------------------------

    async def generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        """One whole answer, within ``request_s``."""
        try:
            async with asyncio.timeout(self.timeouts.request_s):
                if self.config.kind == "petals":
                    return await self._petals_generate(model, prompt, params)
                return await self._openai_generate(model, prompt, params)
        except (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeFailure(
                describe(exc, self.timeouts.request_s, self.timeouts.connect_s, "answer")
            ) from None

    async def _post_form(self, path: str, form: dict[str, Any]) -> dict[str, Any]:
        if self.session is None:
            raise NodeFailure("the pool is not started")
        fields = {k: str(v) for k, v in form.items()}
        async with self.session.post(path, data=fields) as resp:
            return judge(resp.status, await resp.read(), self.url)

    async def tokenize(self, model: str, text: str) -> int | None:
        """The model's own token count of ``text``, or None if this node cannot tell."""
        if self.config.kind != "petals":
            return None
        try:
            async with asyncio.timeout(TOKENIZE_TIMEOUT_S):
                body = await self._post_form("/api/v1/tokenize", {"model": model, "inputs": text})
        except (NodeFailure, NodeRejected, aiohttp.ClientError, OSError, TimeoutError):
            return None
        count = body.get("token_count")
        return count if body.get("ok") is True and int_or_none(count) is not None else None

    async def tokenizer_json(self, model: str) -> str | None:
        """The model's tokenizer.json from this node, or None if it does not share one."""
        if self.config.kind != "petals" or self.session is None:
            return None
        try:
            async with asyncio.timeout(TOKENIZER_FETCH_TIMEOUT_S):
                async with self.session.get("/api/v1/tokenizer", params={"model": model}) as resp:
                    if resp.status != 200:
                        return None
                    raw = await resp.content.read(TOKENIZER_MAX_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if len(raw) > TOKENIZER_MAX_BYTES:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    async def _petals_generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        form = {"model": model, "inputs": prompt, **petals_fields(params)}
        body = await self._post_form("/api/v1/generate", form)
        if body.get("ok") is not True:
            judge_event(body, self.url)
        text = body.get("outputs")
        if not isinstance(text, str):
            raise NodeFailure("the answer has no text outputs")
        return Answer(
            text, int_or_none(body.get("input_tokens")), int_or_none(body.get("output_tokens"))
        )

    async def _openai_generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        resp = await self._client().post("/v1/completions", json=openai_body(model, prompt, params))
        body = judge_response(resp, self.url)
        if "error" in body:
            raise NodeFailure(f"error: {error_text(body)}")
        text = choice_text(body)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Answer(
            text,
            int_or_none(usage.get("prompt_tokens")),
            int_or_none(usage.get("completion_tokens")),
        )

    async def stream(self, model: str, prompt: str, params: GenerateParams) -> AsyncIterator[str]:
        """Non-empty text chunks as the node makes them; each wait at most ``stream_idle_s``,
        all waits together at most ``request_s`` (a slow reader's own time is not counted)."""
        clock = _WaitClock(self.timeouts.request_s, self.timeouts.stream_idle_s)
        inner = self._petals_stream if self.config.kind == "petals" else self._openai_stream
        try:
            async with aclosing(inner(model, prompt, params, clock)) as chunks:
                async for chunk in chunks:
                    if chunk:
                        yield chunk
        except (httpx.HTTPError, OSError, TimeoutError, WebSocketException) as exc:
            why = describe(exc, clock.last_limit, self.timeouts.connect_s, "stream message")
            raise NodeFailure(why) from None

    async def _petals_stream(
        self, model: str, prompt: str, params: GenerateParams, clock: _WaitClock
    ) -> AsyncIterator[str]:
        ws_url = "ws" + self.url.removeprefix("http") + "/api/v2/generate"
        opener = connect(
            ws_url,
            open_timeout=self.timeouts.connect_s,
            close_timeout=self.timeouts.connect_s,
            proxy=None,
            max_size=MAX_MESSAGE_BYTES,
        )
        clock.last_limit = self.timeouts.connect_s
        async with opener as ws:
            self.sockets.add(ws)
            try:
                session: dict[str, Any] = {"type": "open_inference_session", "model": model}
                if "max_length" in self.limits:
                    session["max_length"] = self.limits["max_length"]
                await ws.send(json.dumps(session))
                opened = parse_json(await clock.wait(ws.recv()), "the session reply")
                if opened.get("ok") is not True:
                    judge_event(opened, self.url)
                step = {"type": "generate", "inputs": prompt, **petals_fields(params)}
                await ws.send(json.dumps(step))
                while True:
                    event = parse_json(await clock.wait(ws.recv()), "a stream message")
                    if event.get("ok") is not True:
                        judge_event(event, self.url)
                    text = event.get("outputs", "")
                    if not isinstance(text, str):
                        raise NodeFailure("a stream message has no text outputs")
                    yield text
                    if event.get("stop"):
                        return
            finally:
                self.sockets.discard(ws)

    async def _openai_stream(
        self, model: str, prompt: str, params: GenerateParams, clock: _WaitClock
    ) -> AsyncIterator[str]:
        body = {**openai_body(model, prompt, params), "stream": True}
        timeout = httpx.Timeout(self.timeouts.stream_idle_s, connect=self.timeouts.connect_s)
        clock.last_limit = self.timeouts.stream_idle_s  # httpx's read timeout, for the headers
        client = self._client()
        async with client.stream("POST", "/v1/completions", json=body, timeout=timeout) as resp:
            if not resp.is_success:
                await clock.wait(resp.aread())
                judge_response(resp, self.url)
            lines = resp.aiter_lines()
            while True:
                try:
                    line = await clock.wait(anext(lines))
                except StopAsyncIteration:
                    raise NodeFailure("the stream ended without [DONE]") from None
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = parse_json(data, "a stream event")
                if "error" in event:
                    raise NodeFailure(f"error event: {error_text(event)}")
                yield choice_text(event)


class _WaitClock:
    """Bounds each wait by ``idle_s`` and the sum of all waits by ``total_s``."""

    def __init__(self, total_s: float, idle_s: float) -> None:
        self.left, self.idle_s = total_s, idle_s
        self.last_limit = idle_s

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
