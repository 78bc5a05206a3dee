"""The Petals node's engine seam and its worker: what a model must offer (``Engine``), the jobs
it runs, and the one thread that runs them.

``Engine`` is what the app and the worker need of a model: its tokenizer, its generation and
its scoring of a claimed output (what an auditor asks: would this model have written these
tokens?). ``TransformersEngine`` (``transformers_engine.py``) runs a local model;
``PetalsEngine`` (``supernode.petals.swarm.engine``) the same over a Petals swarm. ``Worker``
runs every job on one thread, with a deadline that covers the wait in the queue: normal jobs
in arrival order, and low-priority ones (audits) only when no normal job is queued or running,
one at a time. A job is refused at once while the engine is unhealthy, or while a job stuck
past its deadline holds the thread (the node is then unhealthy, and the stuck call is logged).

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from loguru import logger

from supernode.errors import GenerationTimeout, Unavailable

HARD_TIMEOUT_GRACE_S = 10.0  # past the deadline, stop waiting even if a forward pass hangs
ChunkSink = Callable[[str, int], None]  # (text, tokens it took); called on the worker thread
T = TypeVar("T")
# What the worker runs: called on its thread with (cancel, deadline), as ``Engine.generate`` is.
JobCall = Callable[[threading.Event, float], T]


# --- jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How to pick each token; greedy (deterministic) unless ``do_sample``."""

    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Job:
    """One generation: ``history`` tokens, then ``inputs`` text, then up to a budget."""

    inputs: str | None
    sampling: Sampling
    max_new_tokens: int | None  # None: as many as ``max_length`` and ``cap`` allow
    max_length: int  # history + inputs + new tokens may not exceed this
    cap: int  # never more new tokens than this
    history: tuple[int, ...] = ()
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    input_ids: list[int]  # the tokens of ``inputs``
    prompt_tokens: int  # history + inputs
    token_ids: list[int]  # the new tokens
    text: str
    finish_reason: str  # "length" | "eos" | "stop_sequence"
    seconds: float


@dataclass(frozen=True)
class ScoredToken:
    """One claimed token, against the model's logits at the position before it."""

    id: int  # the claimed token
    top_id: int  # the model's first choice there
    gap: float  # top logit - claimed logit (0 when the claimed token is a first choice)
    rank: int  # how many tokens have a higher logit than the claimed one (0: top)


@dataclass(frozen=True)
class ScoreEnd:
    """The position after the last claimed token: would the model end the text there?"""

    top_id: int
    eos_gap: float | None  # top logit - the highest end-of-text logit (None: the model has none)
    eos_is_top: bool  # an end-of-text token is the first choice, within the tolerance


@dataclass(frozen=True)
class TokenLogprob:
    """A claimed token's log-probability, and the ``top`` most likely tokens there with
    theirs (OpenAI's ``logprobs``)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ScoreResult:
    """A claimed output scored in one forward pass (one more per silent token put back).

    ``first_failure``: the first position whose claimed token is not the first choice by more
    than the tolerance (the greedy rule); ``first_outside_top_k``: the first whose claimed logit
    is below the k-th largest by more than the tolerance (the sampled rule; None when no
    ``top_k`` was asked). ``inserted``: positions where a silent token (a special token that
    decoding drops, such as ``<unk>`` or ``<pad>``) was put back because the rule asked for it
    there; the text cannot show such tokens, so an honest generation may have held them.
    ``exact_text``: the claimed tokens decode back to exactly the claimed text (False for text
    the tokenizer changes: case it folds, words it does not know)."""

    prompt_tokens: int
    tokens: int  # claimed tokens, those put back included
    positions: tuple[ScoredToken, ...]
    first_failure: int | None
    first_outside_top_k: int | None
    end: ScoreEnd
    inserted: tuple[int, ...]
    exact_text: bool
    seconds: float
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for


@dataclass(frozen=True)
class EngineHealth:
    """Whether the engine can run a request now: a local model can once loaded; a swarm
    client can while every block of the model is served (``reason`` says what is missing,
    ``detail`` is what ``/health`` shows of it)."""

    ok: bool
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --- the engine seam ------------------------------------------------------------------


class Engine(Protocol):
    """A model the node serves: its tokenizer, its generation and its scoring.

    ``TransformersEngine`` (``transformers_engine.py``) runs a local causal LM;
    ``PetalsEngine`` (``supernode.petals.swarm.engine``) runs it over a Petals swarm.
    ``generate`` and ``score`` run on the worker's one thread; ``encode``, ``tokenizer_json``
    and ``health`` only read and may be called from any thread."""

    name: str  # what /health says runs the model, e.g. "transformers"
    device: str  # where it runs, for the start-up log
    max_length: int  # the context: prompt and new tokens together
    load_seconds: float

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (``inputs`` of a request)."""
        ...

    def tokenizer_json(self) -> str | None:
        """The fast tokenizer serialised (tokenizer.json), or None if it has none to share."""
        ...

    def generate(
        self, job: Job, cancel: threading.Event, deadline: float, sink: ChunkSink | None = None
    ) -> Result:
        """Run ``job``; ``GenerationCancelled`` once ``cancel`` is set, ``GenerationTimeout`` past
        ``deadline`` (monotonic), ``BadRequest`` for a prompt that does not fit."""
        ...

    def score(
        self,
        prompt: str,
        output: str,
        *,
        repetition_penalty: float | None,
        top_k: int | None,
        tolerance: float,
        cancel: threading.Event,
        deadline: float,
        logprobs: int | None = None,
    ) -> ScoreResult:
        """Score ``output`` as a continuation of ``prompt`` (see ``ScoreResult``), the logits
        penalised as generation penalises them; ``BadRequest`` (``too_long``) when both do not
        fit in ``max_length``; cancel and deadline as ``generate``. ``logprobs``: also each
        token's log-probability and the ``logprobs`` most likely tokens there."""
        ...

    def health(self) -> EngineHealth:
        """Whether a request can run now (cheap: called on every request and ``/health``)."""
        ...

    def close(self) -> None:
        """Let go of what the engine holds (a swarm client's connections)."""
        ...


# --- the worker -----------------------------------------------------------------------


class Worker:
    """Runs every job on one thread. Normal jobs run in arrival order. A low-priority job (an
    audit's) waits, in the event loop, until no normal job is queued or running, and only one
    runs at a time: a normal job never waits behind a queued low one, at most behind the one
    low job already running. ``busy`` counts normal jobs queued and running; ``busy_low`` low
    ones waiting and running. Each job's deadline covers its wait."""

    def __init__(
        self,
        engine: Engine,
        timeout_s: float,
        max_queue: int,
        grace_s: float = HARD_TIMEOUT_GRACE_S,
    ) -> None:
        self.engine, self.timeout_s, self.max_queue = engine, timeout_s, max_queue
        self.grace_s = grace_s
        # the job on the thread now: (its deadline, the thread's id), and whether the stuck
        # one has been reported
        self._running: tuple[float, int] | None = None
        self._reported: tuple[float, int] | None = None
        self.busy = 0
        self.busy_low = 0
        self._low_running = False
        self._low_waiters: deque[asyncio.Future[None]] = deque()  # first come, first woken
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petals-generate")
        self._cancels: set[threading.Event] = set()

    async def run(self, job: Job, sink: ChunkSink | None = None, *, low: bool = False) -> Result:
        """Generate ``job`` (its text to ``sink`` as it comes), in the low lane if ``low``."""

        def generate(cancel: threading.Event, deadline: float) -> Result:
            return self.engine.generate(job, cancel, deadline, sink)

        return await self.call(generate, low=low)

    def health(self) -> EngineHealth:
        """The engine's health, unless the thread is stuck: a job still on it ``grace_s``
        past its deadline is blocked inside a call that does not return (a hung forward pass,
        a swarm call without a timeout), and holds the only thread every later job needs. Then
        the node is unhealthy (its daemons stop sending it requests, and new ones are refused
        at once), the thread's stack is logged once, and health comes back if the job ends."""
        running = self._running
        if running is not None:
            over = time.monotonic() - running[0]
            if over > self.grace_s:
                if self._reported != running:
                    self._reported = running
                    frame = sys._current_frames().get(running[1])
                    stack = "".join(traceback.format_stack(frame)) if frame else "(gone)"
                    logger.error(
                        "the worker thread is stuck {:.0f} s past a job's deadline, in:\n{}",
                        over,
                        stack,
                    )
                return EngineHealth(
                    False,
                    f"stuck: a job is {over:.0f} s past its deadline on the only worker thread",
                )
        return self.engine.health()

    def _on_thread(self, fn: JobCall[T], cancel: threading.Event, deadline: float) -> T:
        self._running = (deadline, threading.get_ident())
        try:
            return fn(cancel, deadline)
        finally:
            self._running = None

    async def call(self, fn: JobCall[T], *, low: bool = False) -> T:
        """Run ``fn(cancel, deadline)`` on the worker thread, in the low lane if ``low``."""
        health = self.health()
        if not health.ok:
            raise Unavailable(f"the model cannot run now: {health.reason}", reason="unhealthy")
        waiting = self.busy_low if low else self.busy
        if waiting >= self.max_queue:
            lane = "low-priority requests" if low else "requests"
            raise Unavailable(f"{waiting} {lane} are in line; try again soon", reason="busy")
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        deadline = time.monotonic() + self.timeout_s
        if low:
            self.busy_low += 1
            try:
                await self._low_turn(deadline)
            except BaseException:
                self.busy_low -= 1
                raise
        else:
            self.busy += 1
        self._cancels.add(cancel)

        def done(_: Future[T]) -> None:
            try:
                loop.call_soon_threadsafe(self._release, cancel, low)
            except RuntimeError:  # the loop has closed
                pass

        try:
            fut = self._pool.submit(self._on_thread, fn, cancel, deadline)
        except RuntimeError:  # closed: the node is stopping
            self._release(cancel, low)
            raise Unavailable("the node is stopping", reason="stopping") from None
        fut.add_done_callback(done)
        result = asyncio.wrap_future(fut)
        result.add_done_callback(retrieve)  # a dropped job's error is not "never retrieved"
        try:
            left = max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(asyncio.shield(result), left + self.grace_s)
        except TimeoutError:
            raise GenerationTimeout(f"no result in {self.timeout_s} s", reason="deadline") from None
        finally:
            if not fut.done():  # timed out, or our caller was cancelled (client gone)
                cancel.set()
                fut.cancel()

    async def _low_turn(self, deadline: float) -> None:
        """Wait until no normal job is queued or running and no low job runs, then take the
        low lane. A job woken that finds a normal job arrived first waits again, at the front."""
        loop = asyncio.get_running_loop()
        front = False
        while self.busy or self._low_running:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GenerationTimeout(
                    f"no turn in the low-priority lane within {self.timeout_s} s", reason="deadline"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            (self._low_waiters.appendleft if front else self._low_waiters.append)(waiter)
            try:
                await asyncio.wait((waiter,), timeout=left)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving: the turn goes to the next
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                with suppress(ValueError):
                    self._low_waiters.remove(waiter)
            front = True
        self._low_running = True

    def _wake(self) -> None:
        """Wake the first low job waiting, if the lane is free."""
        if self.busy or self._low_running:
            return
        while self._low_waiters:
            waiter = self._low_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, cancel: threading.Event, low: bool) -> None:
        if low:
            self.busy_low -= 1
            self._low_running = False
        else:
            self.busy -= 1
        self._cancels.discard(cancel)
        self._wake()

    def close(self) -> None:
        for cancel in list(self._cancels):
            cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def retrieve(fut: asyncio.Future[T]) -> None:
    if not fut.cancelled():
        fut.exception()
