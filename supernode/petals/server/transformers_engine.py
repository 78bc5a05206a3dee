"""The transformers engine: a causal LM and its tokenizer, run on the worker's thread.

``TransformersEngine`` loads the model (a local folder, or a hub name already cached),
generates, and scores a claimed output: one forward pass over prompt and claimed tokens, each
claimed token against the logits before it, penalised as generation penalises them. Its methods
run on the worker thread, except ``encode`` and ``tokenizer_json``, which only read the
tokenizer and may be called from any thread. It is an ``Engine`` (``engine.py``).

Scoring reads the claimed text back into tokens (``add_special_tokens=False``). That loses the
special tokens a generation may make mid-text (``<unk>``, ``<pad>``, ``<s>``: decoding drops
them), and an honest output scored without them can fail. So where the rule fails, scoring
tries putting such a "silent" token back, and keeps it if the failing token then passes (one
more forward pass a try, at most ``MAX_SILENT_PASSES``): the text is the same either way. The
greedy rule has one place to try, the failing position itself, when the model's first choice
there is silent (greedy generation made it there); the sampled rule tries each position since
the last fix where a silent token is within the top k, the latest first (a sampler may have
drawn it a few tokens before the text went astray).

torch and transformers are imported only when a ``TransformersEngine`` is made, after the
offline switches are set; importing this module imports neither.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from loguru import logger

from supernode.errors import BadRequest, GenerationCancelled, GenerationTimeout
from supernode.petals.server.engine import (
    ChunkSink,
    EngineHealth,
    Job,
    Result,
    Sampling,
    ScoredToken,
    ScoreEnd,
    ScoreResult,
    TokenLogprob,
)

MAX_SILENT_PASSES = 16  # forward passes trying silent tokens back in, for one claimed output
IMPOSSIBLE_LOGIT = -1e30  # stands for -inf (a masked token), so that every gap is finite JSON


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
    """A causal LM and its tokenizer from a local folder (or a hub name already cached).

    The Petals engine (``supernode.petals.swarm.engine``) is this class with the model's
    blocks elsewhere: it overrides where the model comes from (``_load_model``), the context a
    generation runs in (``_generation``, a Petals inference session) and the options of a
    forward pass (``forward_options``); generation and scoring are this class's, the same
    code on both engines."""

    name = "transformers"
    forward_options: dict[str, Any] = {"use_cache": False}  # a scoring pass keeps no cache

    def __init__(self, model_path: str, threads: int | None = None) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(threads)
        started = time.monotonic()
        self._torch = torch
        self._generation_config = transformers.GenerationConfig
        self._criteria_list = transformers.StoppingCriteriaList
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = _load_tokenizer(model_path)
        self._tokenizer_json: str | None = None
        self.model = self._load_model(model_path).to(self.device).eval()
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
        # special tokens other than end-of-text: decoding drops them, so a text cannot show them
        self.silent_ids = sorted(set(self.tokenizer.all_special_ids) - self.eos_ids)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._warm_up()
        self.load_seconds = time.monotonic() - started

    def _warm_up(self) -> None:
        """One token, so that the first request does not pay for what runs only once."""
        self.generate(Job("warm up", Sampling(), 1, self.max_length, 1), threading.Event(), 1e18)

    def _load_model(self, model_path: str) -> Any:
        from transformers import AutoModelForCausalLM

        dtype = self._torch.float32 if self.device == "cpu" else "auto"
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)

    def _generation(self, length: int) -> AbstractContextManager[Any]:
        """The context one generation of up to ``length`` tokens (prompt included) runs in."""
        return nullcontext()

    def health(self) -> EngineHealth:
        """A local model is there once loaded."""
        return EngineHealth(True)

    def close(self) -> None:
        """Nothing to let go of but memory."""

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
        _check_turn(cancel, deadline)
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
        with torch.inference_mode(), self._generation(len(prompt) + budget):
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

    # --- scoring ----------------------------------------------------------------------------

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
        _check_turn(cancel, deadline)
        started = time.monotonic()
        prompt_ids = self.encode(prompt)
        if not prompt_ids:
            raise BadRequest("inputs is empty", reason="empty_inputs")
        claimed = list(self.tokenizer(output, add_special_tokens=False)["input_ids"])
        if len(prompt_ids) + len(claimed) > self.max_length:
            raise BadRequest(
                f"the prompt and the output are {len(prompt_ids)} + {len(claimed)} tokens,"
                f" over max_length {self.max_length}",
                reason="too_long",
            )
        exact = self.decode(claimed) == output
        sampled = top_k is not None

        def judge(tokens: list[int]) -> _Verdict:
            logits = self._logits(prompt_ids, tokens, repetition_penalty)
            if cancel.is_set():
                raise GenerationCancelled
            if time.monotonic() > deadline:
                raise GenerationTimeout("scoring ran past its deadline", reason="deadline")
            return _judge(self._torch, logits, tokens, tolerance, top_k, self.eos_ids)

        verdict = judge(claimed)
        inserted: list[int] = []
        tries = 0
        while (fail := verdict.failure(sampled)) is not None:
            since = inserted[-1] + 1 if inserted else 0  # earlier positions are settled
            fixed = False
            for at, token in verdict.silent_candidates(self.silent_ids, sampled, since):
                if tries >= MAX_SILENT_PASSES or len(prompt_ids) + len(claimed) >= self.max_length:
                    break
                tries += 1
                trial = claimed[:at] + [token] + claimed[at:]
                tried = judge(trial)
                after = tried.failure(sampled)
                # greedy: the model's own choice at ``fail``, kept if nothing before it fails;
                # sampled: kept if the failing token (now at fail + 1) passes
                if after is None or after > fail + sampled:
                    claimed, verdict, fixed = trial, tried, True
                    inserted.append(at)
                    break
            if not fixed:
                break  # no silent token helps here, or no passes or room left
        return ScoreResult(
            prompt_tokens=len(prompt_ids),
            tokens=len(claimed),
            positions=verdict.positions,
            first_failure=verdict.first_failure,
            first_outside_top_k=verdict.first_outside_top_k,
            end=verdict.end,
            inserted=tuple(inserted),
            exact_text=exact,
            seconds=time.monotonic() - started,
            logprobs=None if logprobs is None else self._logprobs(verdict, claimed, logprobs),
        )

    def _logprobs(self, verdict: _Verdict, claimed: list[int], top: int) -> tuple[Any, ...]:
        """Each claimed token's log-probability (a log-softmax of the row's logits) and the
        ``top`` most likely tokens with theirs. A token's text is what it adds after the
        token before it (so a leading space shows, as OpenAI shows it)."""
        torch = self._torch
        n = len(claimed)
        with torch.inference_mode():
            lp = torch.log_softmax(verdict.logits[:n], dim=-1)
            ids = torch.tensor(claimed, dtype=torch.long, device=lp.device)
            vocab = lp.shape[-1]
            got = lp.gather(1, ids.clamp(max=vocab - 1)[:, None])[:, 0].tolist()
            alts = lp.topk(min(top, vocab), dim=-1) if top else None
        out = []
        for i, tid in enumerate(claimed):
            prev = claimed[i - 1 : i]
            alternatives: tuple[tuple[str, float], ...] = ()
            if alts is not None:
                pairs = zip(alts.indices[i].tolist(), alts.values[i].tolist(), strict=True)
                alternatives = tuple((self._piece(prev, a), float(v)) for a, v in pairs)
            out.append(TokenLogprob(self._piece(prev, tid), float(got[i]), alternatives))
        return tuple(out)

    def _piece(self, prev: list[int], tid: int) -> str:
        before = self.decode(prev) if prev else ""
        return self.decode([*prev, tid])[len(before) :]

    def _logits(self, prompt: list[int], claimed: list[int], penalty: float | None) -> Any:
        """One forward pass: the float32 logits before each claimed token and after the last
        (``len(claimed) + 1`` rows), penalised as ``RepetitionPenaltyLogitsProcessor`` does
        at each step (over the prompt and the claimed tokens before the row)."""
        torch = self._torch
        keep = len(claimed) + 1
        input_ids = torch.tensor([prompt + claimed], device=self.device)
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self.forward_options,
                **extra,
            )
            logits = out.logits[0, -keep:].float()
            logits = torch.nan_to_num(
                logits, nan=IMPOSSIBLE_LOGIT, neginf=IMPOSSIBLE_LOGIT, posinf=-IMPOSSIBLE_LOGIT
            )
            if penalty is None or penalty == 1.0:  # as generation: 1.0 is no penalty
                return logits
            vocab = logits.shape[-1]
            seen_in_prompt = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            seen_in_prompt[[i for i in prompt if i < vocab]] = True
            # the row from which each token is penalised for its first claimed occurrence
            first = torch.full((vocab,), keep, dtype=torch.long, device=logits.device)
            known = [(i, at) for at, i in enumerate(claimed) if i < vocab]
            if known:
                ids = torch.tensor([i for i, _ in known], device=logits.device)
                rows = torch.tensor([at + 1 for _, at in known], device=logits.device)
                first.scatter_reduce_(0, ids, rows, reduce="amin")
            row = torch.arange(keep, device=logits.device)[:, None]
            seen = seen_in_prompt[None, :] | (first[None, :] <= row)
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            return torch.where(seen, penalised, logits)


def _load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer. A folder saved by transformers 5 names its class
    ``TokenizersBackend``, which transformers 4 (the Petals environment's) does not know; its
    ``tokenizer.json`` loads there as a ``PreTrainedTokenizerFast``, the same tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except ValueError:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_path)


def _check_turn(cancel: threading.Event, deadline: float) -> None:
    """Before a job starts: the caller may have left, or its wait may have used its time."""
    if cancel.is_set():
        raise GenerationCancelled
    if time.monotonic() > deadline:
        raise GenerationTimeout(
            "the request waited in the queue past its deadline", reason="deadline"
        )


@dataclass(frozen=True)
class _Verdict:
    """One pass's judgement of the claimed tokens (positions, rules, the end)."""

    positions: tuple[ScoredToken, ...]
    first_failure: int | None
    first_outside_top_k: int | None
    end: ScoreEnd
    logits: Any  # [tokens + 1, vocab]
    kth: Any  # per row, the k-th largest logit (None without top_k)
    tolerance: float

    def failure(self, sampled: bool) -> int | None:
        """The first failing position by the sampled rule if ``sampled``, else the greedy."""
        return self.first_outside_top_k if sampled else self.first_failure

    def silent_candidates(
        self, silent_ids: list[int], sampled: bool, since: int
    ) -> list[tuple[int, int]]:
        """(position, silent token) to try putting back, in order, for the rule's first
        failure: greedy, that position if the model's first choice there is silent; sampled,
        each position from ``since`` to it where a silent token is within the top k (the
        likeliest there), the latest first."""
        at = self.failure(sampled)
        vocab = self.logits.shape[-1]
        silent = [i for i in silent_ids if i < vocab]
        if at is None or not silent:
            return []
        if not sampled:
            top = self.positions[at].top_id
            return [(at, top)] if top in silent else []
        rows = self.logits[since : at + 1, silent]
        best_logit, best = rows.max(dim=-1)
        fits = (best_logit >= self.kth[since : at + 1] - self.tolerance).tolist()
        picks = [(since + r, silent[int(b)]) for r, b in enumerate(best.tolist()) if fits[r]]
        return picks[::-1]


def _judge(
    torch: Any,
    logits: Any,
    claimed: list[int],
    tolerance: float,
    top_k: int | None,
    eos_ids: set[int],
) -> _Verdict:
    n, vocab = len(claimed), logits.shape[-1]
    with torch.inference_mode():
        top_logit, top_id = logits.max(dim=-1)
        ids = torch.tensor(claimed, dtype=torch.long, device=logits.device)
        body = logits[:n]
        got = body.gather(1, ids.clamp(max=vocab - 1)[:, None])[:, 0]
        got = torch.where(ids < vocab, got, IMPOSSIBLE_LOGIT)  # a token the model cannot make
        gap = (top_logit[:n] - got).clamp(min=0.0)
        rank = (body > got[:, None]).sum(dim=-1)
        greedy_fails = (ids != top_id[:n]) & (gap > tolerance)
        kth = outside = None
        if top_k is not None:
            kth = body.topk(min(top_k, vocab), dim=-1).values[:, -1]
            outside = got < kth - tolerance
        eos = [i for i in sorted(eos_ids) if i < vocab]
        eos_gap = float(top_logit[n] - logits[n, eos].max()) if eos else None
    positions = tuple(
        ScoredToken(i, t, g, r)
        for i, t, g, r in zip(
            claimed, top_id[:n].tolist(), gap.tolist(), rank.tolist(), strict=True
        )
    )
    return _Verdict(
        positions=positions,
        first_failure=_first(greedy_fails),
        first_outside_top_k=_first(outside) if outside is not None else None,
        end=ScoreEnd(int(top_id[n]), eos_gap, eos_gap is not None and eos_gap <= tolerance),
        logits=logits,
        kth=kth,
        tolerance=tolerance,
    )


def _first(flags: Any) -> int | None:
    hits = flags.nonzero()
    return int(hits[0, 0]) if len(hits) else None
