"""The transformers engine: a causal LM and its tokenizer, run on the worker's thread.

``TransformersEngine`` loads the model (a local folder, or a hub name already cached) and
generates: its methods run on the worker thread, except ``encode`` and ``tokenizer_json``, which
only read the tokenizer and may be called from any thread. It is an ``Engine``
(``engine.py``).

torch and transformers are imported only when a ``TransformersEngine`` is made, after the
offline switches are set; importing this module imports neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from supernode.errors import BadRequest, GenerationCancelled, GenerationTimeout
from supernode.petals.server.engine import ChunkSink, Job, Result, Sampling


class _Chunks:
    """A transformers streamer: hands decoded text to ``sink`` as tokens come.

    It sends the text's growth since the last send, so the chunks add up to the decoded
    whole; a token whose text is not complete yet (a split UTF-8 character) waits."""

    def __init__(self, decode: Callable[[list[int]], str], sink: ChunkSink) -> None:
        self.decode, self.sink = decode, sink
        self.ids: list[int] = []
        self.sent = ""
        self.pending = 0
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        new = value.reshape(-1).tolist()
        self.ids.extend(new)
        self.pending += len(new)
        text = self.decode(self.ids)
        if text.startswith(self.sent) and len(text) > len(self.sent) and text[-1] != "\ufffd":
            self._send(text)

    def end(self) -> None:
        text = self.decode(self.ids)
        if not text.startswith(self.sent):
            logger.warning("streamed text is not a prefix of the final text; the tail is lost")
        elif self.pending:
            self._send(text)

    def _send(self, text: str) -> None:
        self.sink(text[len(self.sent) :], self.pending)
        self.sent, self.pending = text, 0


class _Halt:
    """Stopping criteria: the caller left, the deadline passed, or a stop sequence showed."""

    def __init__(
        self,
        prompt_len: int,
        decode: Callable[[list[int]], str],
        stops: tuple[str, ...],
        cancel: threading.Event,
        deadline: float,
    ) -> None:
        self.prompt_len, self.decode, self.stops = prompt_len, decode, stops
        self.cancel, self.deadline = cancel, deadline
        self.why: str | None = None
        self.tokens = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        self.tokens += 1
        if self.cancel.is_set():
            self.why = "cancelled"
        elif time.monotonic() > self.deadline:
            self.why = "timeout"
        elif self.stops:
            text = self.decode(input_ids[0, self.prompt_len :].tolist())
            if any(text.endswith(s) for s in self.stops):
                self.why = "stop_sequence"
        return input_ids.new_full((input_ids.shape[0],), self.why is not None).bool()


class TransformersEngine:
    """A causal LM and its tokenizer from a local folder (or a hub name already cached)."""

    name = "transformers"

    def __init__(self, model_path: str, threads: int | None = None) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(threads)
        started = time.monotonic()
        self._torch = torch
        self._generation_config = transformers.GenerationConfig
        self._criteria_list = transformers.StoppingCriteriaList
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._tokenizer_json: str | None = None
        dtype = torch.float32 if self.device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.max_length = int(
            getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        self.generate(Job("warm up", Sampling(), 1, self.max_length, 1), threading.Event(), 1e18)
        self.load_seconds = time.monotonic() - started

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def tokenizer_json(self) -> str | None:
        """The fast tokenizer serialised (tokenizer.json), or None if it has none."""
        if self._tokenizer_json is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            self._tokenizer_json = backend.to_str() if backend is not None else ""
        return self._tokenizer_json or None

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(
        self, job: Job, cancel: threading.Event, deadline: float, sink: ChunkSink | None = None
    ) -> Result:
        if cancel.is_set():
            raise GenerationCancelled
        if time.monotonic() > deadline:
            raise GenerationTimeout(
                "the request waited in the queue past its deadline", reason="deadline"
            )
        started = time.monotonic()
        new_ids = self.encode(job.inputs) if job.inputs else []
        prompt = list(job.history) + new_ids
        if not prompt:
            raise BadRequest("inputs is empty", reason="empty_inputs")
        room = job.max_length - len(prompt)
        if job.max_new_tokens is not None and job.max_new_tokens > room:
            raise BadRequest(
                f"the prompt is {len(prompt)} tokens; with max_new_tokens={job.max_new_tokens}"
                f" it is over max_length {job.max_length}",
                reason="too_long",
            )
        if room < 1:
            raise BadRequest(f"the prompt fills max_length {job.max_length}", reason="too_long")
        budget = job.max_new_tokens if job.max_new_tokens is not None else min(room, job.cap)
        s = job.sampling
        options: dict[str, Any] = {"repetition_penalty": s.repetition_penalty}
        if s.do_sample:  # unset fields take the model's own defaults
            options.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        config = self._generation_config(
            max_new_tokens=budget,
            do_sample=s.do_sample,
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
            **{k: v for k, v in options.items() if v is not None},
        )
        halt = _Halt(len(prompt), self.decode, job.stop_sequences, cancel, deadline)
        torch = self._torch
        if s.seed is not None:
            torch.manual_seed(s.seed)  # only this thread generates: one seed, one text
        input_ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                stopping_criteria=self._criteria_list([halt]),
                streamer=_Chunks(self.decode, sink) if sink else None,
            )
        if halt.why == "cancelled":
            raise GenerationCancelled
        if halt.why == "timeout":
            raise GenerationTimeout(
                f"generation ran past its deadline after {halt.tokens} of {budget} tokens",
                reason="deadline",
            )
        ids = out[0, len(prompt) :].tolist()
        finish = halt.why or ("eos" if ids and ids[-1] in self.eos_ids else "length")
        elapsed = time.monotonic() - started
        return Result(new_ids, len(prompt), ids, self.decode(ids), finish, elapsed)
