"""The Petals node: chat.petals.dev's HTTP and WebSocket API over an engine: a local
transformers model, or the same model over a Petals swarm.

Wire (field names as chat.petals.dev has them):
- ``POST /api/v1/generate``, form (or query or JSON) fields ``model, inputs, max_new_tokens |
  max_length, do_sample, temperature, top_k, top_p, repetition_penalty`` (and ``seed``, and
  ``priority``: ``"normal"``, the default, or ``"low"``) → ``{"ok": true, "outputs": text,
  "input_tokens", "output_tokens", "finish_reason"}``.
- WebSocket ``/api/v2/generate``: ``{"type": "open_inference_session", "model", "max_length"}``
  → ``{"ok": true}``; then ``{"type": "generate", "inputs", "max_new_tokens", ...,
  "stop_sequence"?, "extra_stop_sequences"?}`` → ``{"ok": true, "outputs": chunk, "stop": false,
  "token_count": n}``..., the last one with ``"stop": true``. The session keeps its tokens, so a
  later step continues the text. As in chat.petals.dev, without a stop sequence a step makes
  ``max_new_tokens`` tokens; with one, it goes on until the text ends with a stop sequence, an
  end-of-text token or the session's ``max_length`` (at most ``max_new_tokens_limit`` a step).
  A step may say ``"priority": "low"`` too.
- ``POST /api/v1/score``, the same body formats, fields ``model, inputs`` (the prompt),
  ``outputs`` (the claimed text), ``repetition_penalty``?, ``top_k``? (1 or more),
  ``tolerance``? (logits, at least 0, default 1e-3), ``priority``? (``"low"``, the default, or
  ``"normal"``) → ``{"ok": true, "prompt_tokens", "tokens", "first_failure",
  "first_outside_top_k", "end": {"top_id", "eos_gap", "eos_is_top"}, "inserted",
  "exact_text", "positions": [{"id", "top_id", "gap", "rank"}, ...]}``: the claimed tokens
  scored in one forward pass, each against the model's logits before it (an auditor's check
  of another node's output). ``first_failure`` is the first position whose token is not the
  model's first choice by more than the tolerance (greedy), ``first_outside_top_k`` the first
  below the k-th largest logit by more than it (sampled); ``end`` says whether the model would
  end the text where it ends; ``positions`` holds the first ``MAX_SCORE_POSITIONS``. With
  ``logprobs`` (0 to 20) also ``"logprobs": [{"token", "logprob", "top": [[token, logprob],
  ...]}, ...]``: each token's log-probability and that many most likely tokens there
  (OpenAI's logprobs of a generated text, asked for with ``"priority": "normal"``).
- ``POST /api/v1/tokenize``, the same body formats, fields ``model, inputs`` → ``{"ok": true,
  "token_count": n}``: the model's tokenizer's count, as ``input_tokens`` of ``generate``. It
  skips the generation worker's queue (it runs in asyncio's thread pool), so never waits for it.
- ``GET /api/v1/tokenizer?model=`` → the model's fast tokenizer (``tokenizer.json``), so that
  a supernode counts tokens itself (it checks its counts against ``tokenize`` first).
- ``GET /health`` → models, engine, in-flight requests (``busy``; ``busy_low`` for the low
  lane), limits, generations served (``served``, by API), texts tokenized (``tokenized``),
  outputs scored (``scored``) and ``"can_score": true``. On the Petals engine also ``swarm``:
  every block and the servers that hold it (state, throughput, ping). While the engine cannot
  run a request (a block served by nobody) it answers 503 with ``"status": "unhealthy"`` and a
  ``reason``, and every generation or scoring request is refused with 503 at once.

Refusals are ``{"ok": false, "traceback": reason}`` with a 4xx status, never a Python traceback.
One worker thread runs every generation and scoring (torch gets the cores to itself), normal
requests in arrival order; a low-priority one (an audit's) waits until no normal request is
queued or running, one at a time. Each request has a deadline that covers its wait in the
queue. Greedy decoding (``do_sample`` false) is deterministic: the same prompt gives the same
text, on v1 and v2 alike.

The engine seam and its worker are in ``engine`` (the model in ``transformers_engine``), the
request fields and body reading in ``wire``, the command that serves it all in ``run``. torch
and transformers are imported only when a model loads, after the offline switches are set.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from supernode.crypto.wire_json import loads
from supernode.errors import (
    BadRequest,
    GenerationTimeout,
    NotFound,
    PayloadTooLarge,
    SupernodeError,
)
from supernode.petals.server.engine import Engine, Job, Result, ScoreResult, Worker, retrieve
from supernode.petals.server.transformers_engine import TransformersEngine
from supernode.petals.server.wire import (
    MAX_BODY_BYTES,
    parse_float,
    parse_inputs,
    parse_int,
    parse_outputs,
    parse_priority,
    parse_sampling,
    parse_stop_sequences,
    read_values,
    short,
)

DEFAULT_MAX_NEW_TOKENS = 256  # most new tokens one request (or one session step) may make
DEFAULT_TIMEOUT_S = 120.0  # one generation, its wait in the queue included
DEFAULT_STEP_TIMEOUT_S = 300.0  # WebSocket: wait for the client's next message
DEFAULT_MAX_QUEUE = 64  # requests queued or running before new ones get 503 (per lane)
DEFAULT_SCORE_TOLERANCE = 1e-3  # logits: a claimed token this close to the top one passes
MAX_SCORE_TOLERANCE = 1000.0
MAX_TOP_LOGPROBS = 20  # alternatives per token a score answer may list (OpenAI's most)
MAX_SCORE_POSITIONS = 512  # scored positions a score answer lists (the verdicts cover all)


# --- HTTP and WebSocket --------------------------------------------------------------


@dataclass
class ServedModel:
    """The model this node serves: its engine and worker, its limits, what it has done."""

    engine: Engine
    worker: Worker
    name: str  # the model name requests give
    limit: int  # most new tokens of one request (or one session step)
    step_timeout_s: float
    sessions: int = 0  # open v2 sessions
    served: dict[str, int] = field(default_factory=lambda: {"v1": 0, "v2": 0})  # generations
    tokenized: int = 0
    scored: int = 0

    def check_model(self, values: Mapping[str, Any]) -> None:
        """A request naming another model is refused (one naming none is for this one)."""
        asked = values.get("model")
        if asked not in (None, "", self.name):
            raise NotFound(
                f"model {short(asked)} is not served here; this node serves {self.name!r}",
                reason="unknown_model",
            )


def _refusal(exc: SupernodeError) -> dict[str, Any]:
    return {"ok": False, "traceback": exc.detail, "error": exc.code, "reason": exc.reason}


def create_petals_app(
    model_path: str,
    model_name: str | None = None,
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
    max_queue: int = DEFAULT_MAX_QUEUE,
    threads: int | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Load the model (blocking, a few seconds) and return the app that serves it; with
    ``engine`` (loaded from ``model_path``), serve that engine instead."""
    if max_new_tokens_limit < 1 or timeout_s <= 0 or step_timeout_s <= 0 or max_queue < 1:
        raise ValueError("limits and timeouts must be positive")
    path = Path(model_path)
    name = model_name or (path.resolve().name if path.is_dir() else model_path)
    if engine is None:
        engine = TransformersEngine(model_path, threads=threads)
    logger.info(
        "petals node: model {} from {} loaded in {:.2f} s ({} engine, {}, context {} tokens)",
        name,
        model_path,
        engine.load_seconds,
        engine.name,
        engine.device,
        engine.max_length,
    )
    limit = min(max_new_tokens_limit, engine.max_length - 1)
    model = ServedModel(engine, Worker(engine, timeout_s, max_queue), name, limit, step_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            model.worker.close()
            model.engine.close()

    app = FastAPI(title="Supernode petals node", lifespan=lifespan)
    app.state.model = model

    @app.exception_handler(SupernodeError)
    async def _known(request: Request, exc: SupernodeError) -> JSONResponse:
        logger.info("{} {} refused ({}): {}", request.method, request.url.path, exc.code, exc)
        return JSONResponse(_refusal(exc), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"ok": False, "traceback": str(exc.detail), "error": "http_error"}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        logger.debug("client hung up during {}", request.url.path)
        return JSONResponse({"ok": False, "traceback": "client disconnected"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.opt(exception=exc).error("error {} on {}", error_id, request.url.path)
        body = {"ok": False, "traceback": f"internal error {error_id}", "error_id": error_id}
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while a request can run; 503 (``status``: ``unhealthy``, and ``reason``) while
        the engine cannot run one (a Petals swarm missing a block)."""
        state = model.worker.health()
        body = {
            "status": "ok" if state.ok else "unhealthy",
            "reason": state.reason,
            "models": [model.name],
            "engine": model.engine.name,
            "busy": model.worker.busy,
            "busy_low": model.worker.busy_low,
            "sessions": model.sessions,
            "max_new_tokens": model.limit,
            "max_length": model.engine.max_length,
            "served": model.served,
            "tokenized": model.tokenized,
            "scored": model.scored,
            "can_score": True,
            **state.detail,
        }
        return JSONResponse(body, status_code=200 if state.ok else 503)

    @app.post("/api/v1/generate")
    async def generate_v1(request: Request) -> dict[str, Any]:
        values = await read_values(request)
        model.check_model(values)
        if values.get("session_id"):
            raise BadRequest("the HTTP API has no sessions; use the WebSocket /api/v2/generate")
        inputs = parse_inputs(values, required=True)
        sampling = parse_sampling(values)
        max_new = parse_int(values, "max_new_tokens", 1, model.limit)
        max_length = parse_int(values, "max_length", 1, model.engine.max_length)
        if max_new is None and max_length is None:
            raise BadRequest("give max_new_tokens (or max_length)", reason="missing_max_new_tokens")
        low = parse_priority(values, default="normal")
        job = Job(inputs, sampling, max_new, max_length or model.engine.max_length, model.limit)
        result = await model.worker.run(job, low=low)
        model.served["v1"] += 1
        logger.info(
            "v1 generate: {} + {} tokens in {:.3f} s ({})",
            result.prompt_tokens,
            len(result.token_ids),
            result.seconds,
            result.finish_reason,
        )
        return {
            "ok": True,
            "outputs": result.text,
            "model": model.name,
            "input_tokens": result.prompt_tokens,
            "output_tokens": len(result.token_ids),
            "finish_reason": result.finish_reason,
        }

    @app.post("/api/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        """Score another node's claimed output in one forward pass (an audit's check)."""
        values = await read_values(request)
        model.check_model(values)
        prompt = parse_inputs(values, required=True)
        assert prompt is not None  # required
        output = parse_outputs(values)
        penalty = parse_float(values, "repetition_penalty", lo=0.0, hi=100.0)
        top_k = parse_int(values, "top_k", 1, 1_000_000)
        tolerance = parse_float(
            values, "tolerance", lo=0.0, hi=MAX_SCORE_TOLERANCE, lo_included=True
        )
        tolerance = DEFAULT_SCORE_TOLERANCE if tolerance is None else tolerance
        low = parse_priority(values, default="low")
        logprobs = parse_int(values, "logprobs", 0, MAX_TOP_LOGPROBS)

        def run(cancel: threading.Event, deadline: float) -> ScoreResult:
            return model.engine.score(
                prompt,
                output,
                repetition_penalty=penalty,
                top_k=top_k,
                tolerance=tolerance,
                cancel=cancel,
                deadline=deadline,
                logprobs=logprobs,
            )

        result = await model.worker.call(run, low=low)
        model.scored += 1
        logger.info(
            "score: {} + {} tokens in {:.3f} s: first failure {}, outside top-k {}, "
            "end by eos {}{}",
            result.prompt_tokens,
            result.tokens,
            result.seconds,
            result.first_failure,
            result.first_outside_top_k,
            result.end.eos_is_top,
            f", {len(result.inserted)} silent tokens put back" if result.inserted else "",
        )
        return {"ok": True, "model": model.name, **score_body(result)}

    @app.get("/api/v1/tokenizer")
    async def tokenizer(request: Request) -> Response:
        """The model's fast tokenizer (its tokenizer.json), so that a supernode can count
        tokens itself instead of asking here for every request."""
        model.check_model(dict(request.query_params))
        raw = model.engine.tokenizer_json()
        if raw is None:
            return JSONResponse(
                {"ok": False, "error": "this model has no fast tokenizer to share"},
                status_code=404,
            )
        return Response(raw, media_type="application/json")

    @app.post("/api/v1/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        values = await read_values(request)
        model.check_model(values)
        inputs = parse_inputs(values, required=True)
        assert inputs is not None  # required
        # Not through the worker: the tokenizer is only read, so it may run beside a generation;
        # on a thread, not the event loop, as 100,000 characters take ~20 ms.
        count = len(await asyncio.to_thread(model.engine.encode, inputs))
        model.tokenized += 1
        return {"ok": True, "token_count": count}

    @app.websocket("/api/v2/generate")
    async def generate_v2(ws: WebSocket) -> None:
        await ws.accept()
        model.sessions += 1
        try:
            await _session(ws, model)
        except (WebSocketDisconnect, OSError):
            logger.debug("v2 session: the client left")
        except SupernodeError as exc:
            logger.info("v2 session refused ({}): {}", exc.code, exc)
            await _close(ws, _refusal(exc), 1000)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            logger.opt(exception=exc).error("error {} in a v2 session", error_id)
            await _close(ws, {"ok": False, "traceback": f"internal error {error_id}"}, 1011)
        finally:
            model.sessions -= 1

    return app


def score_body(result: ScoreResult) -> dict[str, Any]:
    """A score answer's fields (all but ``ok`` and ``model``)."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "tokens": result.tokens,
        "first_failure": result.first_failure,
        "first_outside_top_k": result.first_outside_top_k,
        "end": {
            "top_id": result.end.top_id,
            "eos_gap": result.end.eos_gap,
            "eos_is_top": result.end.eos_is_top,
        },
        "inserted": list(result.inserted),
        "exact_text": result.exact_text,
        "positions": [
            {"id": p.id, "top_id": p.top_id, "gap": p.gap, "rank": p.rank}
            for p in result.positions[:MAX_SCORE_POSITIONS]
        ],
        **(
            {}
            if result.logprobs is None
            else {
                "logprobs": [
                    {"token": t.token, "logprob": t.logprob, "top": [list(a) for a in t.top]}
                    for t in result.logprobs[:MAX_SCORE_POSITIONS]
                ]
            }
        ),
    }


async def _close(ws: WebSocket, message: dict[str, Any], code: int) -> None:
    try:
        await ws.send_json(message)
        await ws.close(code)
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass


async def _receive(ws: WebSocket, model: ServedModel) -> dict[str, Any]:
    try:
        message = await asyncio.wait_for(ws.receive(), model.step_timeout_s)
    except TimeoutError:
        detail = f"no message from the client in {model.step_timeout_s} s"
        raise GenerationTimeout(detail, reason="idle") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") or message.get("bytes") or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"message over {MAX_BODY_BYTES} bytes")
    try:
        data = loads(raw)
    except ValueError:
        raise BadRequest("a message must be a JSON object", reason="bad_message") from None
    if not isinstance(data, dict):
        raise BadRequest("a message must be a JSON object", reason="bad_message")
    return data


async def _session(ws: WebSocket, model: ServedModel) -> None:
    """One inference session: open, then generate steps until the client leaves."""
    opened = await _receive(ws, model)
    if opened.get("type") != "open_inference_session":
        raise BadRequest('the first message must be {"type": "open_inference_session", ...}')
    model.check_model(opened)
    max_length = parse_int(opened, "max_length", 1, model.engine.max_length)
    max_length = max_length or model.engine.max_length
    await ws.send_json({"ok": True})
    history: list[int] = []
    while True:
        step = await _receive(ws, model)
        if step.get("type") != "generate":
            raise BadRequest('a session step must be {"type": "generate", ...}')
        inputs = parse_inputs(step, required=not history)
        stops = parse_stop_sequences(step)
        max_new = parse_int(step, "max_new_tokens", 1, model.limit)
        job = Job(
            inputs,
            parse_sampling(step),
            None if stops else max_new,  # with a stop sequence, max_new_tokens is a step size
            max_length,
            model.limit,
            tuple(history),
            stops,
        )
        result = await _stream(ws, model, job, low=parse_priority(step, default="normal"))
        history += result.input_ids + result.token_ids


async def _stream(ws: WebSocket, model: ServedModel, job: Job, *, low: bool = False) -> Result:
    """Run one step, sending text as it comes; the last message says ``"stop": true``."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()

    def sink(text: str, tokens: int) -> None:  # on the worker thread
        loop.call_soon_threadsafe(chunks.put_nowait, (text, tokens))

    task = asyncio.create_task(model.worker.run(job, sink, low=low))
    task.add_done_callback(lambda _: chunks.put_nowait(None))  # after every chunk
    try:
        held: tuple[str, int] | None = None  # one chunk back, so the last can carry stop=true
        while (chunk := await chunks.get()) is not None:
            if held is not None:
                await ws.send_json(
                    {"ok": True, "outputs": held[0], "stop": False, "token_count": held[1]}
                )
            held = chunk
        result = await task
    finally:
        if not task.done():
            task.cancel()  # the client left: the worker drops the job at its next token
        else:
            retrieve(task)
    text, count = held or ("", 0)
    model.served["v2"] += 1
    await ws.send_json(
        {
            "ok": True,
            "outputs": text,
            "stop": True,
            "token_count": count,
            "input_tokens": result.prompt_tokens,
            "output_tokens": len(result.token_ids),
            "finish_reason": result.finish_reason,
        }
    )
    return result
