"""Scoring a claimed output on the real tiny model (torch runs; nothing of it is faked): an
honest output passes with every gap 0, another model's output fails at once, a cut text is
told from an ended one, sampled outputs pass the top-k rule; silent tokens an honest output
held are put back; the HTTP route and its refusals, the low-priority lane, and the client and
pool calls against the app served on a real port."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI

import supernode.petals.server.transformers_engine as transformers_engine
from supernode.devnet import free_port
from supernode.errors import GenerationTimeout, NodeRejected, Unavailable
from supernode.petals.client.base import NodeConfig, Timeouts
from supernode.petals.client.openai import OpenAINodeClient
from supernode.petals.client.petals import PetalsNodeClient
from supernode.petals.client.pool import GenerateParams, NodePool
from supernode.petals.server.app import create_petals_app
from supernode.petals.server.engine import Job, Result, Sampling, ScoreResult, Worker
from supernode.petals.server.tiny_model import build_vocab, make_tiny_model
from supernode.petals.server.transformers_engine import TransformersEngine

MODEL = "tiny"
NEVER = threading.Event()  # never set: nothing cancels these jobs
NO_DEADLINE = math.inf
MAX_NEW = 24
TIMEOUTS = Timeouts(request_s=20.0, connect_s=2.0, stream_idle_s=5.0, health_s=5.0)


def make_prompts(n: int, seed: int, shortest: int = 2) -> list[str]:
    words = build_vocab()[4:]  # no special tokens
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(shortest, 12))) for _ in range(n)]


PROMPTS = make_prompts(30, seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model, and one with other weights and the same tokenizer."""
    root = tmp_path_factory.mktemp("score")
    return make_tiny_model(root / MODEL), make_tiny_model(root / "other", seed=1)


@pytest.fixture(scope="module")
def engine(models: tuple[Path, Path]) -> TransformersEngine:
    return TransformersEngine(str(models[0]))


@pytest.fixture(scope="module")
def other(models: tuple[Path, Path]) -> TransformersEngine:
    return TransformersEngine(str(models[1]))


def generate(
    engine: TransformersEngine, prompt: str, sampling: Sampling = Sampling(), n: int = MAX_NEW
) -> Result:
    return engine.generate(Job(prompt, sampling, n, engine.max_length, n), NEVER, NO_DEADLINE)


def score(engine: TransformersEngine, prompt: str, output: str, **kw: Any) -> ScoreResult:
    options: dict[str, Any] = {"repetition_penalty": None, "top_k": None, "tolerance": 1e-3}
    return engine.score(prompt, output, cancel=NEVER, deadline=NO_DEADLINE, **{**options, **kw})


def text_ids(engine: TransformersEngine, result: Result) -> list[int]:
    """The tokens the text stands for: all but an end-of-text token."""
    ids = result.token_ids
    return ids[:-1] if ids and ids[-1] in engine.eos_ids else ids


# --- the engine ----------------------------------------------------------------------


def test_the_nodes_own_greedy_output_passes_with_every_gap_zero(
    engine: TransformersEngine,
) -> None:
    ended = 0
    for i, prompt in enumerate(PROMPTS):
        penalty = 1.3 if i % 2 else None
        made = generate(engine, prompt, Sampling(repetition_penalty=penalty))
        s = score(engine, prompt, made.text, repetition_penalty=penalty)
        ids = text_ids(engine, made)
        assert s.first_failure is None, (prompt, penalty, s.positions)
        assert [p.id for p in s.positions] == ids  # silent tokens put back where they were
        assert all(p.gap == 0.0 and p.rank == 0 and p.top_id == p.id for p in s.positions)
        assert (s.prompt_tokens, s.tokens, s.exact_text) == (made.prompt_tokens, len(ids), True)
        if made.finish_reason == "eos":
            ended += 1
            assert s.end.eos_is_top and s.end.eos_gap == 0.0
        else:  # cut by the budget: the end is what one more token would have been
            longer = generate(engine, prompt, Sampling(repetition_penalty=penalty), MAX_NEW + 1)
            assert s.end.top_id == longer.token_ids[MAX_NEW]
            assert s.end.eos_is_top == (longer.token_ids[MAX_NEW] in engine.eos_ids)
    assert ended < len(PROMPTS)  # the tiny model rarely ends: most ends above were cuts


def test_logprobs_of_a_greedy_output_are_its_top_choices(engine: TransformersEngine) -> None:
    prompt = PROMPTS[4]
    made = generate(engine, prompt, n=12)
    s = score(engine, prompt, made.text, logprobs=3)
    assert s.logprobs is not None and len(s.logprobs) == s.tokens
    assert score(engine, prompt, made.text).logprobs is None  # only when asked
    for t in s.logprobs:
        assert t.logprob <= 0.0 and len(t.top) == 3
        values = [v for _, v in t.top]
        assert values == sorted(values, reverse=True)
        assert math.isclose(t.logprob, values[0], abs_tol=1e-5)  # greedy: the first choice
        assert t.token == t.top[0][0]
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
    assert "".join(t.token for t in s.logprobs) == made.text
    assert score(engine, prompt, made.text, logprobs=0).logprobs[0].top == ()  # type: ignore[index]


def test_the_repetition_penalty_is_applied_as_generation_applies_it(
    engine: TransformersEngine,
) -> None:
    differ = 0
    for prompt in PROMPTS:
        penalised = generate(engine, prompt, Sampling(repetition_penalty=1.5)).text
        if penalised == generate(engine, prompt).text:
            continue
        differ += 1
        assert score(engine, prompt, penalised, repetition_penalty=1.5).first_failure is None
        plain = score(engine, prompt, penalised, tolerance=0.0)
        assert plain.first_failure is not None  # scored without the penalty it was made with
    assert differ >= 10, "the penalty changed too few outputs to tell"


def test_another_models_greedy_output_fails_early(
    engine: TransformersEngine, other: TransformersEngine
) -> None:
    firsts = []
    for prompt in PROMPTS:
        s = score(engine, prompt, generate(other, prompt).text)
        if s.first_failure is not None:
            firsts.append(s.first_failure)
            assert s.positions[s.first_failure].gap > 1e-3
    failed = len(firsts) / len(PROMPTS)
    print(f"another model's greedy output failed for {failed:.0%}, at positions {firsts}")
    assert failed >= 0.9 and max(firsts) <= 2  # measured: every one, at position 0


def test_one_token_swapped_for_the_second_choice_fails_there_by_its_margin(
    engine: TransformersEngine,
) -> None:
    for i, prompt in enumerate(PROMPTS[:10]):
        honest = score(engine, prompt, generate(engine, prompt).text)
        ids = [p.id for p in honest.positions]
        at = 3 + i % 5
        prompt_ids = engine.encode(prompt)
        with torch.inference_mode():
            logits = engine.model(torch.tensor([prompt_ids + ids[:at]])).logits[0, -1]
        (top, second), (top_id, second_id) = (v.tolist() for v in logits.topk(2))
        assert top_id == ids[at]
        cheat = engine.decode(ids[:at] + [second_id] + ids[at + 1 :])
        s = score(engine, prompt, cheat, tolerance=0.0)
        assert s.first_failure == at
        assert (s.positions[at].rank, s.positions[at].top_id) == (1, top_id)
        assert s.positions[at].gap == pytest.approx(top - second, abs=1e-6)


def test_an_output_cut_short_passes_but_would_not_end_there(engine: TransformersEngine) -> None:
    cut = 0
    for prompt in PROMPTS[:12]:
        made = generate(engine, prompt, n=40)
        ids = text_ids(engine, made)
        half = len(ids) // 2
        s = score(engine, prompt, engine.decode(ids[:half]))
        assert s.first_failure is None
        assert s.end.top_id == ids[half]  # the model goes on with its own next token
        assert s.end.eos_is_top is False and s.end.eos_gap is not None and s.end.eos_gap > 1e-3
        cut += 1
    assert cut == 12


def test_sampled_outputs_pass_the_top_k_rule(
    engine: TransformersEngine, other: TransformersEngine
) -> None:
    prompts = make_prompts(50, seed=5)
    outside, greedy_fails = 0, 0
    for i, prompt in enumerate(prompts):
        temperature = 1.0 if i % 2 else 0.7
        sampling = Sampling(do_sample=True, temperature=temperature, top_k=5, seed=i)
        s = score(engine, prompt, generate(engine, prompt, sampling).text, top_k=5)
        outside += s.first_outside_top_k is not None
        greedy_fails += s.first_failure is not None
    print(f"honest sampled outputs outside the top 5: {outside}/{len(prompts)}")
    assert outside == 0  # measured: 0 of 300 (0 of 600 at top_k 50)
    assert greedy_fails >= len(prompts) * 0.8  # the greedy rule is not the one for them
    caught = sum(
        score(engine, p, generate(other, p).text, top_k=5).first_outside_top_k is not None
        for p in PROMPTS
    )
    assert caught >= len(PROMPTS) * 0.9


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_silent_tokens_an_honest_output_held_are_put_back(
    engine: TransformersEngine, sampled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    top_k = 50 if sampled else None
    rule = "first_outside_top_k" if sampled else "first_failure"
    for i, prompt in enumerate(make_prompts(150, seed=1, shortest=1)):
        sampling = Sampling(do_sample=True, top_k=50, seed=i) if sampled else Sampling()
        made = generate(engine, prompt, sampling, n=40)
        if not set(made.token_ids) & set(engine.silent_ids):
            continue
        with monkeypatch.context() as patched:
            patched.setattr(transformers_engine, "MAX_SILENT_PASSES", 0)
            bare = score(engine, prompt, made.text, top_k=top_k)
        if getattr(bare, rule) is not None:
            break  # an honest output that fails unless its silent tokens are put back
    else:
        pytest.fail("no honest output holding a silent token fails without it")
    ids = text_ids(engine, made)
    assert made.text == engine.decode([i for i in ids if i not in engine.silent_ids])
    s = score(engine, prompt, made.text, top_k=top_k)
    assert getattr(s, rule) is None
    assert s.exact_text and s.inserted and s.tokens == bare.tokens + len(s.inserted)
    if not sampled:  # greedy: put back exactly where generation made them
        assert [p.id for p in s.positions] == ids
        assert list(s.inserted) == [i for i, t in enumerate(ids) if t in engine.silent_ids]
        assert bare.first_failure == s.inserted[0]


def test_text_the_tokenizer_changes_is_not_exact(engine: TransformersEngine) -> None:
    made = generate(engine, PROMPTS[0])
    s = score(engine, PROMPTS[0], made.text.upper())  # the tokenizer folds case
    assert s.first_failure is None and s.exact_text is False
    s = score(engine, PROMPTS[0], made.text + " zzyzx")  # not a word it knows: <unk>
    assert s.exact_text is False


def test_scoring_on_other_thread_counts_agrees(engine: TransformersEngine) -> None:
    threads = torch.get_num_threads()
    worst = 0.0
    try:
        for prompt in PROMPTS[:10]:
            torch.set_num_threads(1)
            made = generate(engine, prompt)
            torch.set_num_threads(2)
            s = score(engine, prompt, made.text, tolerance=0.0)
            assert s.first_failure is None
            worst = max([worst, *(p.gap for p in s.positions)])
    finally:
        torch.set_num_threads(threads)
    assert worst <= 1e-5  # measured: 0 (logits differ by at most 1.5e-7)


def test_a_claim_over_max_length_is_refused_and_cancel_and_deadline_hold(
    engine: TransformersEngine,
) -> None:
    from supernode.errors import BadRequest, GenerationCancelled

    with pytest.raises(BadRequest) as refused:
        score(engine, "the " * 200, "the " * 57)
    assert refused.value.reason == "too_long"
    assert score(engine, "the " * 200, "the " * 56).tokens == 56  # exactly max_length fits
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(GenerationCancelled):
        engine.score(PROMPTS[0], "the", repetition_penalty=None, top_k=None, tolerance=0.0,
                     cancel=cancelled, deadline=NO_DEADLINE)  # fmt: skip
    with pytest.raises(GenerationTimeout):
        engine.score(PROMPTS[0], "the", repetition_penalty=None, top_k=None, tolerance=0.0,
                     cancel=NEVER, deadline=time.monotonic() - 1)  # fmt: skip


def test_an_empty_output_is_scored_at_its_end(engine: TransformersEngine) -> None:
    s = score(engine, PROMPTS[0], "")
    assert (s.tokens, s.positions, s.first_failure) == (0, (), None)
    assert s.end.top_id == generate(engine, PROMPTS[0], n=1).token_ids[0]


# --- the low-priority lane ---------------------------------------------------------------


def _job(
    engine: TransformersEngine, order: list[str], name: str, gate: threading.Event | None = None
) -> Callable[[threading.Event, float], Result]:
    """A real generation that logs its start and end (and first waits for ``gate``)."""

    def run(cancel: threading.Event, deadline: float) -> Result:
        order.append(f"{name} starts")
        if gate is not None:
            assert gate.wait(10)
        job = Job(PROMPTS[0], Sampling(), 8, engine.max_length, 8)
        result = engine.generate(job, cancel, deadline)
        order.append(f"{name} ends")
        return result

    return run


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


async def test_a_low_job_waits_for_normal_ones_queued_before_and_after_it(
    engine: TransformersEngine,
) -> None:
    worker, order, gate = Worker(engine, 30.0, 8), [], threading.Event()
    try:
        first = asyncio.create_task(worker.call(_job(engine, order, "normal 1", gate)))
        await _until(lambda: order == ["normal 1 starts"])
        low = asyncio.create_task(worker.call(_job(engine, order, "low"), low=True))
        await asyncio.sleep(0.05)
        later = asyncio.create_task(worker.call(_job(engine, order, "normal 2")))
        await asyncio.sleep(0.05)
        assert (worker.busy, worker.busy_low) == (2, 1)
        gate.set()
        texts = {r.text for r in await asyncio.gather(first, low, later)}
    finally:
        worker.close()
    assert len(texts) == 1  # the same real generation three times
    assert order == [
        "normal 1 starts",
        "normal 1 ends",
        "normal 2 starts",  # submitted after the low job, run before it
        "normal 2 ends",
        "low starts",
        "low ends",
    ]
    assert (worker.busy, worker.busy_low) == (0, 0)


async def test_a_normal_job_waits_only_for_the_low_job_already_running(
    engine: TransformersEngine,
) -> None:
    worker, order, gate = Worker(engine, 30.0, 8), [], threading.Event()
    try:
        low1 = asyncio.create_task(worker.call(_job(engine, order, "low 1", gate), low=True))
        await _until(lambda: order == ["low 1 starts"])  # an idle worker runs it at once
        low2 = asyncio.create_task(worker.call(_job(engine, order, "low 2"), low=True))
        await asyncio.sleep(0.05)
        normal = asyncio.create_task(worker.call(_job(engine, order, "normal")))
        await asyncio.sleep(0.05)
        assert (worker.busy, worker.busy_low) == (1, 2)
        gate.set()
        await asyncio.gather(low1, low2, normal)
    finally:
        worker.close()
    assert order == [
        "low 1 starts",
        "low 1 ends",
        "normal starts",
        "normal ends",
        "low 2 starts",
        "low 2 ends",
    ]


async def test_a_low_job_that_never_gets_its_turn_times_out_and_a_full_lane_refuses(
    engine: TransformersEngine,
) -> None:
    worker, order, gate = Worker(engine, 0.3, 1), [], threading.Event()
    try:
        normal = asyncio.create_task(worker.call(_job(engine, order, "normal", gate)))
        await _until(lambda: order == ["normal starts"])
        low = asyncio.create_task(worker.call(_job(engine, order, "low"), low=True))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="low-priority"):  # max_queue 1 per lane
            await worker.call(_job(engine, order, "low 2"), low=True)
        started = time.monotonic()
        with pytest.raises(GenerationTimeout, match="low-priority lane"):
            await low
        assert time.monotonic() - started < 1.0
        assert worker.busy_low == 0
        gate.set()
        await asyncio.gather(normal, return_exceptions=True)  # its deadline passed too
    finally:
        worker.close()
    assert "low starts" not in order


async def test_a_low_job_whose_caller_leaves_passes_its_turn_on(
    engine: TransformersEngine,
) -> None:
    worker, order, gate = Worker(engine, 30.0, 8), [], threading.Event()
    try:
        normal = asyncio.create_task(worker.call(_job(engine, order, "normal", gate)))
        await _until(lambda: order == ["normal starts"])
        gone = asyncio.create_task(worker.call(_job(engine, order, "gone"), low=True))
        kept = asyncio.create_task(worker.call(_job(engine, order, "kept"), low=True))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        await asyncio.gather(normal, kept)
        assert gone.cancelled()
    finally:
        worker.close()
    assert order == ["normal starts", "normal ends", "kept starts", "kept ends"]
    assert (worker.busy, worker.busy_low) == (0, 0)


async def test_a_job_stuck_past_its_deadline_makes_the_worker_unhealthy_until_it_ends(
    engine: TransformersEngine,
) -> None:
    from loguru import logger

    worker, order, release = Worker(engine, 0.2, 4, grace_s=0.2), [], threading.Event()
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR")

    def hung(cancel: threading.Event, deadline: float) -> str:  # ignores its cancel
        order.append("hung starts")
        assert release.wait(20)
        order.append("hung ends")
        return "late"

    try:
        assert worker.health().ok
        with pytest.raises(GenerationTimeout):  # its caller stops waiting at deadline + grace
            await worker.call(hung)
        await _until(lambda: not worker.health().ok)
        state = worker.health()
        assert state.reason and state.reason.startswith("stuck: a job is"), state
        # refused, not queued behind the stuck thread (it never starts: see the order below)
        with pytest.raises(Unavailable, match="stuck") as refused:
            await worker.call(_job(engine, order, "next"))
        assert refused.value.reason == "unhealthy"
        worker.health()
        stuck_logs = [e for e in errors if "worker thread is stuck" in e]
        assert len(stuck_logs) == 1 and "in hung" in stuck_logs[0]  # once, with its stack
        release.set()
        await _until(lambda: worker.health().ok)
        assert (await worker.call(_job(engine, order, "after"))).text
    finally:
        release.set()
        logger.remove(sink)
        worker.close()
    assert order == ["hung starts", "hung ends", "after starts", "after ends"]


# --- HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(models: tuple[Path, Path]) -> Iterator[FastAPI]:
    app = create_petals_app(str(models[0]))
    try:
        yield app
    finally:
        app.state.model.worker.close()


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client


async def test_score_over_http(http: httpx.AsyncClient) -> None:
    before = (await http.get("/health")).json()
    assert before["can_score"] is True and before["busy_low"] == 0
    prompt = PROMPTS[1]
    made = await http.post(
        "/api/v1/generate", data={"inputs": prompt, "max_new_tokens": 16, "priority": "low"}
    )
    normal = await http.post("/api/v1/generate", data={"inputs": prompt, "max_new_tokens": 16})
    assert made.status_code == 200 and made.json()["outputs"] == normal.json()["outputs"]
    text = made.json()["outputs"]
    r = await http.post("/api/v1/score", data={"model": MODEL, "inputs": prompt, "outputs": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "ok", "model", "prompt_tokens", "tokens", "first_failure", "first_outside_top_k",
        "end", "inserted", "exact_text", "positions",
    }  # fmt: skip
    assert body["ok"] is True and body["first_failure"] is None
    assert body["first_outside_top_k"] is None  # no top_k asked
    assert body["prompt_tokens"] == made.json()["input_tokens"]
    assert body["tokens"] == len(body["positions"]) == 16
    assert set(body["end"]) == {"top_id", "eos_gap", "eos_is_top"}
    assert all(
        p["gap"] == 0 and p["rank"] == 0 and p["id"] == p["top_id"] for p in body["positions"]
    )
    # a JSON body, a top_k and the normal lane: the same verdict
    fields = {"inputs": prompt, "outputs": text, "top_k": 5, "priority": "normal", "tolerance": 0}
    again = (await http.post("/api/v1/score", json=fields)).json()
    assert again["first_outside_top_k"] is None and again["positions"] == body["positions"]
    # a made-up continuation fails, and says where
    cheat = await http.post("/api/v1/score", data={"inputs": prompt, "outputs": "the " * 8})
    assert cheat.json()["first_failure"] is not None
    after = (await http.get("/health")).json()
    assert after["scored"] - before["scored"] == 3
    assert (after["busy"], after["busy_low"]) == (0, 0)


@pytest.mark.parametrize(
    ("fields", "status", "reason", "says"),
    [
        ({"model": "bigscience/bloom"}, 404, "unknown_model", "bigscience/bloom"),
        ({"inputs": None}, 400, "empty_inputs", "inputs"),
        ({"inputs": "  "}, 400, "empty_inputs", "inputs"),
        ({"outputs": None}, 400, "bad_outputs", "outputs"),
        ({"outputs": "x" * 100_001}, 413, None, "outputs"),
        ({"tolerance": "-0.1"}, 400, "out_of_range", "tolerance"),
        ({"tolerance": "nan"}, 400, "out_of_range", "tolerance"),
        ({"tolerance": "small"}, 400, "bad_number", "tolerance"),
        ({"top_k": "0"}, 400, "out_of_range", "top_k"),
        ({"top_k": "five"}, 400, "bad_number", "top_k"),
        ({"repetition_penalty": "0"}, 400, "out_of_range", "repetition_penalty"),
        ({"priority": "urgent"}, 400, "bad_priority", "priority"),
        ({"inputs": "the " * 200, "outputs": "the " * 57}, 400, "too_long", "max_length"),
    ],
)
async def test_score_refuses_bad_fields_with_a_reason(
    http: httpx.AsyncClient, fields: dict[str, Any], status: int, reason: str | None, says: str
) -> None:
    data = {"model": MODEL, "inputs": PROMPTS[0], "outputs": "the old man", **fields}
    r = await http.post("/api/v1/score", data={k: v for k, v in data.items() if v is not None})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body.get("reason") == reason and says in body["traceback"]


async def test_generate_refuses_a_bad_priority(http: httpx.AsyncClient) -> None:
    fields = {"inputs": PROMPTS[0], "max_new_tokens": 4, "priority": "soon"}
    r = await http.post("/api/v1/generate", data=fields)
    assert r.status_code == 400 and r.json()["reason"] == "bad_priority"


# --- the client and the pool, against the app on a real port -------------------------------


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", ws="none", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await _until(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _pool(*nodes: NodeConfig) -> NodePool:
    return NodePool(
        list(nodes),
        request_timeout_s=20.0,
        connect_timeout_s=2.0,
        max_tries=2,
        breaker_failures=3,
        breaker_reset_s=30.0,
        stream_idle_timeout_s=5.0,
    )


async def test_the_pool_scores_on_a_node_that_can(served: str, engine: TransformersEngine) -> None:
    pool = _pool(NodeConfig(served), NodeConfig("http://127.0.0.1:1", kind="openai"))
    await pool.start()
    try:
        prompt = PROMPTS[2]
        made = await pool.generate(MODEL, prompt, GenerateParams(max_new_tokens=12), True)
        plain = await pool.generate(MODEL, prompt, GenerateParams(max_new_tokens=12))
        assert made.text == plain.text == generate(engine, prompt, n=12).text
        body = await pool.score(MODEL, prompt, made.text, tolerance=0.0)
        assert body is not None and body["node_url"] == served
        assert body["first_failure"] is None and body["tokens"] == 12
        direct = score(engine, prompt, made.text, tolerance=0.0)
        assert body["end"]["top_id"] == direct.end.top_id
        cheat = await pool.score(MODEL, prompt, "the " * 6, top_k=5, repetition_penalty=1.2)
        assert cheat is not None and cheat["first_outside_top_k"] is not None
        with pytest.raises(NodeRejected):  # the request's fault: no fail-over, no breaker
            await pool.score(MODEL, prompt, made.text, top_k=0)
        assert pool.status()[0]["failures"] == 0
        assert await pool.score("another-model", prompt, made.text) is None
        assert pool.can_score(MODEL) and not pool.can_score("another-model")
        lp = await pool.score(MODEL, prompt, made.text, logprobs=2)
        assert lp is not None and len(lp["logprobs"]) == 12
        assert all(len(t["top"]) == 2 for t in lp["logprobs"])
    finally:
        await pool.stop()


async def test_a_node_that_cannot_score_answers_none(served: str) -> None:
    openai = OpenAINodeClient(NodeConfig("http://127.0.0.1:1", kind="openai"), TIMEOUTS)
    assert await openai.score(MODEL, "a prompt", "an output") is None  # never calls
    petals = PetalsNodeClient(NodeConfig(served), TIMEOUTS)
    petals.open()
    try:
        assert await petals.score(MODEL, "a prompt", "the") is None  # health not read yet
        await petals.check_health()
        assert petals.can_score
        body = await petals.score(MODEL, PROMPTS[0], "the old man")
        assert body is not None and body["ok"] is True and body["tokens"] == 3
    finally:
        await petals.close()
