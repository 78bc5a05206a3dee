"""The node pool: which local inference node runs a request, and what happens when one fails.

Nodes come from config (``NodeConfig``); ``check_health`` (an apscheduler job) asks each what it
serves. A request goes to a healthy node that serves the model and whose circuit breaker lets it
through, the least loaded relative to its weight (in-flight requests / weight); equally loaded
nodes take turns by smooth weighted round-robin. A failure (timeout, connection error, HTTP 5xx,
``"ok": false``, an error event, empty output) counts toward that node's breaker and the request
moves to another node, at most ``max_tries`` tries in all and never the same node twice while an
untried one is left. A stream moves only until its first chunk was handed on. A node that refuses
the request's parameters (a 4xx) ends the call with ``NodeRejected`` (400): another node would
refuse it too.

Breaker: ``breaker_failures`` consecutive failures open it for ``breaker_reset_s``; then it is
half-open and lets one trial request through, whose outcome closes or reopens it.

Audits: ``generate(..., low_priority=True)`` runs an auditor's re-run in the node's low lane
(after the node's normal requests); ``score`` has a node that can score (a Petals node whose
health says so) score another node's claimed output, with the same choice, fail-over and
breaker as ``generate``, or returns None when no node can.

Token counts: the first count for a model asks a node (``/api/v1/tokenize``) and fetches the
model's tokenizer from it in the background (``/api/v1/tokenizer``); once its counts agree
with the node's on a few probe texts, later counts are made here (the ``tokenizers``
library, microseconds for a prompt) and the node only generates.

One client per node, of the class its kind names (``NODE_CLIENTS``): ``PetalsNodeClient``
(``petals.py``) or ``OpenAINodeClient`` (``openai.py``), both ``NodeClient`` (``base.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from loguru import logger
from tokenizers import Tokenizer

from supernode.errors import NodeUnavailable
from supernode.petals.client.base import NodeClient, NodeConfig, Timeouts
from supernode.petals.client.openai import OpenAINodeClient
from supernode.petals.client.petals import PetalsNodeClient
from supernode.petals.client.protocol import Chunk, GenerateParams, NodeFailure, NodeRejected
from supernode.petals.client.stops import StopCutter

__all__ = [
    "GenerateParams",
    "GenerateResult",
    "NodeConfig",
    "NodePool",
    "NodeRejected",
    "NodeUnavailable",
]

DEFAULT_HEALTH_TIMEOUT_S = 5.0  # a whole health check of one node
TOKENIZER_RETRY_S = 60.0  # a model whose tokenizer could not be had is tried again after this
INLINE_TOKENIZE_CHARS = 4096  # longer texts are counted on a thread, not the event loop
TOKENIZER_PROBES = (  # a local tokenizer is used only if it counts these as the node does
    "Hello, World! 42 times (or more): zzyzx quux.",
    "  spaces \t and\nnew lines  ",
    "ünïcödé, 中文, emoji 🙂 and a very-long-hyphenated_word",
    "the quick brown fox jumps over the lazy dog " * 8,
)

# NodeConfig.kind -> the class that speaks that node's API
NODE_CLIENTS: dict[str, type[NodeClient]] = {
    cls.kind: cls for cls in (PetalsNodeClient, OpenAINodeClient)
}


def node_client(config: NodeConfig, timeouts: Timeouts) -> NodeClient:
    """The client for a configured node, of the class its kind names."""
    cls = NODE_CLIENTS.get(config.kind)
    if cls is None:
        kinds = tuple(NODE_CLIENTS)
        raise ValueError(f"node {config.url}: kind must be one of {kinds}, not {config.kind!r}")
    return cls(config, timeouts)


@dataclass(frozen=True)
class GenerateResult:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    node_url: str
    latency_s: float  # the whole call, failed tries included
    attempts: int  # tries made, this one included


class NodePool:
    """Local inference nodes: health, load-aware choice, fail-over and a breaker per node."""

    def __init__(
        self,
        nodes: list[NodeConfig],
        *,
        request_timeout_s: float,
        connect_timeout_s: float,
        max_tries: int,
        breaker_failures: int,
        breaker_reset_s: float,
        stream_idle_timeout_s: float,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    ) -> None:
        timeouts = Timeouts(
            request_timeout_s, connect_timeout_s, stream_idle_timeout_s, health_timeout_s
        )
        if min(request_timeout_s, connect_timeout_s, stream_idle_timeout_s, health_timeout_s) <= 0:
            raise ValueError("node timeouts must be positive")
        if max_tries < 1 or breaker_failures < 1 or breaker_reset_s <= 0:
            raise ValueError("max_tries, breaker_failures and breaker_reset_s must be positive")
        urls = [n.url for n in nodes]
        if len(set(urls)) != len(urls):
            raise ValueError(f"a node is listed twice: {urls}")
        self._nodes = [node_client(config, timeouts) for config in nodes]
        self._tokenizers: dict[str, Tokenizer] = {}  # model -> checked local tokenizer
        self._tokenizer_tried: dict[str, float] = {}  # model -> monotonic time of a fetch
        self._fetches: set[asyncio.Task[None]] = set()
        self.max_tries = max_tries
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        # per model: a moving average of how long a whole answer took (queueing included)
        self._answer_s: dict[str, float] = {}

    async def start(self) -> None:
        """Open one keep-alive client per node and check every node once."""
        for node in self._nodes:
            node.open()
        await self.check_health()

    async def stop(self) -> None:
        """Stop tokenizer fetches; close every client and open stream."""
        for task in list(self._fetches):
            task.cancel()
        await asyncio.gather(*self._fetches, return_exceptions=True)
        for node in self._nodes:
            await node.close()

    async def check_health(self) -> None:
        """``GET /health`` (petals) or ``GET /v1/models`` (openai) on every node, at once."""
        await asyncio.gather(*(node.check_health() for node in self._nodes))

    def models(self) -> dict[str, list[str]]:
        """Model name -> URLs of the healthy nodes serving it (breakers not considered)."""
        served: dict[str, list[str]] = {}
        for node in self._nodes:
            if node.healthy:
                for model in node.models:
                    served.setdefault(model, []).append(node.url)
        return served

    async def tokenize(self, model: str, text: str) -> int | None:
        """The model's own token count of ``text``: here once the model's tokenizer is
        fetched and checked, else from up to two healthy nodes serving it; None when none
        can tell."""
        local = self._tokenizers.get(model)
        if local is not None:
            if len(text) <= INLINE_TOKENIZE_CHARS:
                return len(local.encode(text).ids)
            return len((await asyncio.to_thread(local.encode, text)).ids)
        self._fetch_tokenizer_later(model)
        for node in [n for n in self._nodes if n.healthy and model in n.models][:2]:
            count = await node.tokenize(model, text)
            if count is not None:
                return count
        return None

    def local_tokenizer(self, model: str) -> bool:
        """Whether token counts of ``model`` are made here (see tokenize)."""
        return model in self._tokenizers

    def _fetch_tokenizer_later(self, model: str) -> None:
        now = time.monotonic()
        last = self._tokenizer_tried.get(model)
        if last is not None and now - last < TOKENIZER_RETRY_S:
            return
        self._tokenizer_tried[model] = now
        task = asyncio.create_task(self._fetch_tokenizer(model), name=f"tokenizer-{model}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch_tokenizer(self, model: str) -> None:
        for node in [n for n in self._nodes if n.healthy and model in n.models]:
            raw = await node.tokenizer_json(model)
            if raw is None:
                continue
            try:
                local = await asyncio.to_thread(Tokenizer.from_str, raw)
            except Exception as exc:  # noqa: BLE001 - a node's bad file: ask the next
                logger.warning("tokenizer of {} from {} unreadable: {!r}", model, node.url, exc)
                continue
            for probe in TOKENIZER_PROBES:
                theirs = await node.tokenize(model, probe)
                ours = len(local.encode(probe).ids)
                if theirs != ours:
                    logger.warning(
                        "tokenizer of {} from {} counts {} tokens where the node counts {}: "
                        "not used",
                        model,
                        node.url,
                        ours,
                        theirs,
                    )
                    break
            else:
                self._tokenizers[model] = local
                logger.info(
                    "token counts of {} are made here now (tokenizer of {})", model, node.url
                )
                return

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "url": n.url,
                "kind": n.config.kind,
                "weight": n.config.weight,
                "healthy": n.healthy,
                "models": list(n.models),
                "inflight": n.inflight,
                "failures": n.failures,
                "breaker": n.breaker(self.breaker_reset_s, now),
                "last_error": n.last_error,
                "last_check": n.last_check,
                "max_new_tokens": n.limits.get("max_new_tokens"),
            }
            for n in self._nodes
        ]

    def _ready(self, model: str, scoring: bool = False, chat: bool = False) -> list[NodeClient]:
        """The nodes that can take a request for ``model`` now (and score, if ``scoring``;
        answer a chat for their chat API, if ``chat``)."""
        now = time.monotonic()
        return [
            n
            for n in self._nodes
            if n.available(model, self.breaker_reset_s, now)
            and (n.can_score or not scoring)
            and (n.takes_chat or not chat)
        ]

    def expected_wait_s(self, model: str) -> float:
        """How long a request for ``model`` sent now should take, judging by the recent
        answers (a moving average, queueing at the node included); 0 when the least
        loaded node is idle (or nothing is known yet)."""
        ready = self._ready(model)
        if not ready or min(n.inflight for n in ready) == 0:
            return 0.0
        return self._answer_s.get(model, 0.0)

    # --- choosing a node ----------------------------------------------------------------

    def _pick(
        self, model: str, tried: list[NodeClient], scoring: bool = False, chat: bool = False
    ) -> NodeClient | None:
        """The least loaded available node, untried ones first; ties by weighted turns."""
        ready = self._ready(model, scoring, chat)
        ready = [n for n in ready if n not in tried] or ready
        if not ready:
            return None
        least = min(n.inflight / n.config.weight for n in ready)
        tied = [n for n in ready if n.inflight / n.config.weight == least]
        for n in tied:
            n.current_weight += n.config.weight
        chosen = max(tied, key=lambda n: n.current_weight)  # the first on a tie
        chosen.current_weight -= sum(n.config.weight for n in tied)
        return chosen

    def _tries(
        self, model: str, scoring: bool = False, chat: bool = False
    ) -> Iterator[tuple[int, NodeClient]]:
        """(try number, node) for up to max_tries tries, never the same node twice while
        an untried one is left; stops early when no node can take the model."""
        tried: list[NodeClient] = []
        for attempt in range(1, self.max_tries + 1):
            node = self._pick(model, tried, scoring, chat)
            if node is None:
                return
            tried.append(node)
            yield attempt, node

    @contextmanager
    def _lease(self, node: NodeClient) -> Iterator[None]:
        """Counts the request in flight; a half-open node's request is its trial."""
        node.inflight += 1
        trial = node.breaker(self.breaker_reset_s) == "half-open"
        node.trial = node.trial or trial
        try:
            yield
        finally:
            node.inflight -= 1
            if trial:
                node.trial = False  # no verdict (the caller left): the next request is the trial

    def _failed(self, node: NodeClient, model: str, attempt: int, exc: NodeFailure) -> str:
        logger.warning(
            "node {} failed (model {}, try {}/{}): {}",
            node.url,
            model,
            attempt,
            self.max_tries,
            exc,
        )
        node.record_failure(str(exc), self.breaker_failures, self.breaker_reset_s)
        return f"{node.url}: {exc}"

    def _nothing_ready(self, model: str) -> str:
        """Why no node can take ``model`` now, node by node."""
        if not self._nodes:
            return "no nodes are configured"
        now = time.monotonic()
        why = []
        for n in self._nodes:
            state = n.breaker(self.breaker_reset_s, now)
            if not n.healthy:
                reason = f"unhealthy ({n.last_error or 'not checked yet'})"
            elif model not in n.models:
                reason = "does not serve it"
            elif state == "open":
                left = self.breaker_reset_s - (now - (n.opened_at or now))
                reason = f"breaker open for {left:.1f} s more ({n.last_error})"
            else:
                reason = "busy with its half-open trial request"
            why.append(f"{n.url}: {reason}")
        return "; ".join(why)

    def _give_up(self, model: str, errors: list[str]) -> NodeUnavailable:
        if not errors:
            detail = f"no node can serve model {model!r} now: {self._nothing_ready(model)}"
            return NodeUnavailable(detail, reason="no_node")
        tries = f"{len(errors)} {'try' if len(errors) == 1 else 'tries'}"
        detail = f"model {model!r} failed on every node tried ({tries}): {'; '.join(errors)}"
        if len(errors) < self.max_tries:
            detail += f"; no other node left ({self._nothing_ready(model)})"
        logger.warning("giving up on a request for {}: {}", model, detail)
        return NodeUnavailable(detail, reason="all_tries_failed")

    # --- requests -----------------------------------------------------------------------

    async def generate(
        self, model: str, prompt: str, params: GenerateParams, low_priority: bool = False
    ) -> GenerateResult:
        """One whole answer from the first node that gives a non-empty one; with
        ``low_priority``, in the node's low lane (an auditor's re-run)."""
        if low_priority:
            params = replace(params, low_priority=True)
        if params.stop and not params.chat:  # (a chat's node cuts at its stops itself)
            return await self._generate_to_stop(model, prompt, params)
        started = time.monotonic()
        errors: list[str] = []
        for attempt, node in self._tries(model, chat=params.chat):
            with self._lease(node):
                try:
                    answer = await node.generate(model, prompt, params)
                    if not answer.text:
                        raise NodeFailure("empty output")
                except NodeFailure as exc:
                    errors.append(self._failed(node, model, attempt, exc))
                    continue
                except NodeRejected as exc:
                    node.record_success()  # it answered, and rightly: the node is fine
                    logger.info("node {} refused a request for {}: {}", node.url, model, exc)
                    raise
                node.record_success()
            if attempt > 1:
                logger.info("request for {} served by {} on try {}", model, node.url, attempt)
            took = time.monotonic() - started
            self._answer_s[model] = 0.8 * self._answer_s.get(model, took) + 0.2 * took
            return GenerateResult(
                text=answer.text,
                input_tokens=answer.input_tokens,
                output_tokens=answer.output_tokens,
                node_url=node.url,
                latency_s=took,
                attempts=attempt,
            )
        raise self._give_up(model, errors)

    async def _generate_to_stop(
        self, model: str, prompt: str, params: GenerateParams
    ) -> GenerateResult:
        """A whole answer with stop sequences: streamed, cut at the first one, and the
        node's generation ended there (the stream is closed). The token count is left to
        the caller (the node's counts the text it made, not the cut one)."""
        started = time.monotonic()
        parts: list[str] = []
        served: list[str] = []  # the node that answered, and the tries made
        async with aclosing(self.stream(model, prompt, params, served)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        took = time.monotonic() - started
        return GenerateResult("".join(parts), None, None, served[-1], took, len(served))

    def takes_chat(self, model: str) -> bool:
        """Whether a ready node serving ``model`` answers chats for its own chat API
        (tools, response formats): an OpenAI-compatible node."""
        return bool(self._ready(model, chat=True))

    def can_score(self, model: str) -> bool:
        """Whether a ready node serving ``model`` scores outputs (and gives logprobs)."""
        return bool(self._ready(model, scoring=True))

    async def score(self, model: str, prompt: str, output: str, **kw: Any) -> dict[str, Any] | None:
        """How a node serving ``model`` scores ``output`` as the continuation of ``prompt``
        (``kw``: ``repetition_penalty``, ``top_k``, ``tolerance``, ``logprobs``, as
        ``NodeClient.score``):
        its answer, with ``node_url`` added. None when no ready node can score the model;
        ``NodeUnavailable`` when every node tried failed, ``NodeRejected`` when one refused."""
        if not self._ready(model, scoring=True):
            return None
        errors: list[str] = []
        for attempt, node in self._tries(model, scoring=True):
            with self._lease(node):
                try:
                    body = await node.score(model, prompt, output, **kw)
                except NodeFailure as exc:
                    errors.append(self._failed(node, model, attempt, exc))
                    continue
                except NodeRejected as exc:
                    node.record_success()  # it answered, and rightly: the node is fine
                    logger.info("node {} refused to score for {}: {}", node.url, model, exc)
                    raise
                if body is None:  # it cannot score after all (its health changed): no verdict
                    continue
                node.record_success()
            return {**body, "node_url": node.url}
        if not errors:
            return None
        raise self._give_up(model, errors)

    async def stream(
        self, model: str, prompt: str, params: GenerateParams, served: list[str] | None = None
    ) -> AsyncIterator[Chunk]:
        """Text chunks as a node makes them (non-empty, in order; the iterator ends after the
        last), cut at the first of ``params.stop`` (the node's generation then ends); for a
        chat that goes to a node's chat API, that node's deltas (``openai.chat_piece``), which
        it cut at the stops itself. Fails
        over only before the first chunk was yielded; after that a failure ends the stream
        with ``NodeUnavailable``. ``served`` gets the url of each node tried."""
        if not params.stop or params.chat:  # (a chat's node cuts at its stops itself)
            async with aclosing(self._stream(model, prompt, params, served)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        cutter = StopCutter(params.stop)
        async with aclosing(self._stream(model, prompt, params, served)) as chunks:
            async for chunk in chunks:
                if out := cutter.feed(chunk):
                    yield out
                if cutter.stopped:
                    return  # closing the node's stream ends its generation
        if out := cutter.flush():
            yield out

    async def _stream(
        self, model: str, prompt: str, params: GenerateParams, served: list[str] | None
    ) -> AsyncIterator[Chunk]:
        errors: list[str] = []
        for attempt, node in self._tries(model):
            if served is not None:
                served.append(node.url)
            sent = 0
            with self._lease(node):
                try:
                    async with aclosing(node.stream(model, prompt, params)) as chunks:
                        async for chunk in chunks:
                            sent += 1
                            yield chunk
                    if not sent:
                        raise NodeFailure("empty stream (no text)")
                except NodeFailure as exc:
                    errors.append(self._failed(node, model, attempt, exc))
                    if sent:
                        detail = f"node {node.url} failed after {sent} chunks of {model!r}: {exc}"
                        raise NodeUnavailable(detail, reason="stream_broken") from None
                    continue
                except NodeRejected as exc:
                    node.record_success()
                    logger.info("node {} refused a stream for {}: {}", node.url, model, exc)
                    raise
                node.record_success()
            if attempt > 1:
                logger.info("stream for {} served by {} on try {}", model, node.url, attempt)
            return
        raise self._give_up(model, errors)
