"""The Petals node's engine seam and its worker: what a model must offer (``Engine``), the jobs
it runs, and the one thread that runs them.

``Engine`` is what the app and the worker need of a model: its tokenizer and its generation.
``TransformersEngine`` (``transformers_engine.py``) is the one engine so far; a Petals swarm
client would be another. ``Worker`` runs every job on one thread in arrival order, with a
deadline that covers the wait in the queue.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from supernode.errors import GenerationTimeout, Unavailable

HARD_TIMEOUT_GRACE_S = 10.0  # past the deadline, stop waiting even if a forward pass hangs
ChunkSink = Callable[[str, int], None]  # (text, tokens it took); called on the worker thread


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


# --- the engine seam ------------------------------------------------------------------


class Engine(Protocol):
    """A model the node serves: its tokenizer and its generation.

    ``TransformersEngine`` (``transformers_engine.py``) runs a local causal LM; another engine
    (a Petals swarm client) fits beside it by having the same members. ``generate`` runs on
    the worker's one thread; ``encode`` and ``tokenizer_json`` only read and may be called
    from any thread."""

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


# --- the worker -----------------------------------------------------------------------


class Worker:
    """Runs every job on one thread, in arrival order; ``busy`` counts queued and running."""

    def __init__(self, engine: Engine, timeout_s: float, max_queue: int) -> None:
        self.engine, self.timeout_s, self.max_queue = engine, timeout_s, max_queue
        self.busy = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petals-generate")
        self._cancels: set[threading.Event] = set()

    async def run(self, job: Job, sink: ChunkSink | None = None) -> Result:
        if self.busy >= self.max_queue:
            raise Unavailable(f"{self.busy} requests are in line; try again soon", reason="busy")
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        deadline = time.monotonic() + self.timeout_s
        self.busy += 1
        self._cancels.add(cancel)

        def done(_: Future[Result]) -> None:
            try:
                loop.call_soon_threadsafe(self._release, cancel)
            except RuntimeError:  # the loop has closed
                pass

        fut = self._pool.submit(self.engine.generate, job, cancel, deadline, sink)
        fut.add_done_callback(done)
        result = asyncio.wrap_future(fut)
        result.add_done_callback(retrieve)  # a dropped job's error is not "never retrieved"
        try:
            return await asyncio.wait_for(
                asyncio.shield(result), self.timeout_s + HARD_TIMEOUT_GRACE_S
            )
        except TimeoutError:
            raise GenerationTimeout(f"no result in {self.timeout_s} s", reason="deadline") from None
        finally:
            if not fut.done():  # timed out, or our caller was cancelled (client gone)
                cancel.set()
                fut.cancel()

    def _release(self, cancel: threading.Event) -> None:
        self.busy -= 1
        self._cancels.discard(cancel)

    def close(self) -> None:
        for cancel in list(self._cancels):
            cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def retrieve(fut: asyncio.Future[Result]) -> None:
    if not fut.cancelled():
        fut.exception()
