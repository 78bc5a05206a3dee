"""OpenAI-compatible routes: /v1/models, /v1/models/{id}, /v1/completions and
/v1/chat/completions (streamed and not). Every field is honoured or refused
(``inference/openai_params.py``); errors use OpenAI's shape and statuses,
``{"error": {"message", "type", "param", "code"}}``, so any OpenAI SDK raises the error
class it would raise for OpenAI itself."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from loguru import logger

from supernode.api.deps import body_doc, json_body
from supernode.api.guard import read_json
from supernode.crypto.envelope import Envelope
from supernode.errors import SupernodeError, TooManyRequests
from supernode.inference.key_limits import Admission
from supernode.inference.openai import Job, OpenAIGateway
from supernode.inference.openai_fields import OpenAIError
from supernode.inference.openai_params import CHAT_FIELDS, COMPLETION_FIELDS, parse_request
from supernode.node import Supernode

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

# reasons that mean the key's budget is spent: OpenAI's exhausted quota (429, do not retry)
QUOTA_REASONS = ("insufficient_credits", "delegation_cap", "over_max_cost")


def as_openai(exc: SupernodeError) -> OpenAIError:
    """A daemon error in OpenAI's terms."""
    headers: dict[str, str] = {}
    if isinstance(exc, TooManyRequests):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif exc.status == 503:  # behind or a node down for now: worth a try again soon
        headers["retry-after"] = "1"
    if exc.reason in QUOTA_REASONS:
        return OpenAIError(
            429,
            f"You exceeded your current quota: {exc.detail}",
            code="insufficient_quota",
            type_="insufficient_quota",
        )
    status = exc.status
    if status == 422:
        status = 400  # OpenAI has no 422: a rule said no to this request
    return OpenAIError(status, exc.detail, code=exc.reason or exc.code, headers=headers)


def error_response(err: OpenAIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _node(request: Request) -> Supernode:
    return request.app.state.node


def _model_card(node: Supernode, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": m["model"],
        "object": "model",
        "created": int(node.started_at),
        "owned_by": node.address,
        "pricing": {
            "credits_per_input_token": m["credits_per_input_token"],
            "credits_per_output_token": m["credits_per_output_token"],
        },
        "limits": {
            "max_input_tokens": m["max_input_tokens"],
            "max_output_tokens": m["max_new_tokens"],
        },
    }


@router.get("/models")
async def models(request: Request, authorization: str | None = Header(default=None)) -> Any:
    """The models this supernode serves now (an API key is required, as at OpenAI)."""
    node = _node(request)
    try:
        d = node.openai.delegation(authorization)
    except SupernodeError as exc:
        return error_response(as_openai(exc))
    menu = node.inference.model_menu()
    data = [_model_card(node, m) for m in menu if node.openai.allows(d, m["model"])]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}")
async def model(
    model_id: str, request: Request, authorization: str | None = Header(default=None)
) -> Any:
    node = _node(request)
    try:
        d = node.openai.delegation(authorization)
        if node.openai.allows(d, model_id):
            node.openai.model_entry(model_id)
    except OpenAIError as err:
        return error_response(err)
    except SupernodeError as exc:
        return error_response(as_openai(exc))
    for m in node.inference.model_menu():
        if m["model"] == model_id and node.openai.allows(d, model_id):
            return _model_card(node, m)
    return error_response(
        OpenAIError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    )


async def _run(request: Request, chat: bool, authorization: str | None) -> Any:
    node = _node(request)
    gw = node.openai
    started = time.perf_counter()
    admission: Admission | None = None
    try:
        d = gw.delegation(authorization)
        req = parse_request(await read_json(request), chat)
        admission, limit_headers = await gw.admit(d, req)
        job = await gw.prepare(d, req)
        if req.user is not None:
            logger.info("request {} for user {!r}", job.request_id, req.user)
        if req.stream:
            streaming, admission = admission, None  # the stream releases it when it ends
            events = _sse(gw, d, job, streaming)
            # The first event waits for the spend's certificate: a refusal there is still
            # an HTTP status. Once started, the generator's cleanup runs even if the
            # client leaves before the body is sent (asyncio closes started generators).
            first = await anext(events)
            return StreamingResponse(
                _chain(first, events),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", **limit_headers},
            )
        prepared = time.perf_counter()
        text, usage = await gw.complete(d, job)
        if admission is not None:
            admission.settle(usage["total_tokens"])
    except OpenAIError as err:
        return error_response(err)
    except SupernodeError as exc:
        return error_response(as_openai(exc))
    finally:
        if admission is not None:
            admission.release()
    cid = ("chatcmpl-" if chat else "cmpl-") + job.request_id[2:26]
    message = job.message(text) if chat else None
    finish = job.finish_reason(
        usage["completion_tokens"], bool(message and message.get("tool_calls"))
    )
    logprobs = None
    if req.logprobs is not None:
        tokens = await gw.logprobs(job, text)
        if tokens is not None:
            logprobs = chat_logprobs(tokens) if chat else completion_logprobs(tokens, req.logprobs)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
    if message is not None:
        choice["message"] = message
    else:
        choice["text"] = (job.prompt + text) if req.echo else text
    resp = json_body(
        {
            "id": cid,
            "object": "chat.completion" if chat else "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": None,
            "supernode": {"request_id": job.request_id, "executor": node.address},
        }
    )
    resp.headers["server-timing"] = server_timing(started, prepared, job.timing)
    resp.headers.update(limit_headers)
    return resp


def chat_logprobs(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """A node's token logprobs as chat's ``choices[].logprobs``."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [
        {**entry(t["token"], t["logprob"]), "top_logprobs": [entry(a, v) for a, v in t["top"]]}
        for t in tokens
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(tokens: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """A node's token logprobs as completions' ``choices[].logprobs``."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t["token"])
    return {
        "tokens": [t["token"] for t in tokens],
        "token_logprobs": [t["logprob"] for t in tokens],
        "top_logprobs": [dict(t["top"]) for t in tokens] if top else None,
        "text_offset": offsets,
    }


def server_timing(started: float, prepared: float, steps: dict[str, float]) -> str:
    """The Server-Timing header: ``prepare`` (parse, key, quote, the request written),
    ``generate`` (the text back from the node) and ``total``, in ms. No quorum round is
    in the way: the request is settled afterwards."""
    parts = [f"prepare;dur={(prepared - started) * 1000:.2f}"]
    parts += [f"{k};dur={v:.2f}" for k, v in steps.items()]
    parts.append(f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
    return ", ".join(parts)


async def _sse(
    gw: OpenAIGateway, d: Envelope, job: Job, admission: Admission | None
) -> AsyncGenerator[bytes, None]:
    try:
        async for part in _events(gw, d, job):
            yield part
    finally:
        if admission is not None:
            admission.settle(job.prompt_tokens + (job.completion_tokens or 0))
            admission.release()


async def _chain(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for part in rest:
            yield part
    finally:
        await rest.aclose()


async def _events(gw: OpenAIGateway, d: Envelope, job: Job) -> AsyncIterator[bytes]:
    req = job.req
    chat = req.chat
    cid = ("chatcmpl-" if chat else "cmpl-") + job.request_id[2:26]
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": cid,
            "object": kind,
            "created": job.created,
            "model": job.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if req.include_usage:
            out["usage"] = None  # OpenAI: null on every chunk but the last
        return out

    def choice(
        piece: str | dict[str, Any] | None, finish: str | None, role: bool = False
    ) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if isinstance(piece, dict):  # a delta of the node's chat API: content, tool calls
                delta.update(piece)
            elif piece is not None:
                delta["content"] = piece
            c["delta"] = delta
        else:
            c["text"] = piece or ""
        return c

    first = True
    called = False  # whether the answer calls tools (its finish reason is then tool_calls)
    try:
        async for piece in gw.stream(d, job):
            if first:
                if chat:
                    yield event(chunk([choice(None, None, role=True)]))
                elif req.echo:
                    yield event(chunk([choice(job.prompt, None)]))
                first = False
            called = called or (isinstance(piece, dict) and "tool_calls" in piece)
            yield event(chunk([choice(piece, None)]))
        completion = job.completion_tokens or 0
        finish = job.finish_reason(completion, called)
        yield event(chunk([choice(None, finish)]))
        if req.include_usage:
            usage = {
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": job.prompt_tokens + completion,
            }
            yield event({**chunk([]), "usage": usage})
        yield b"data: [DONE]\n\n"
    except SupernodeError as exc:
        if first:
            raise  # nothing sent yet: the route answers it with its status
        yield event(as_openai(exc).body())


def _fields(names: set[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {n: {} for n in sorted(names)}}


@router.post("/completions", openapi_extra=body_doc(_fields(COMPLETION_FIELDS)))
async def completions(request: Request, authorization: str | None = Header(default=None)) -> Any:
    return await _run(request, False, authorization)


@router.post("/chat/completions", openapi_extra=body_doc(_fields(CHAT_FIELDS)))
async def chat_completions(
    request: Request, authorization: str | None = Header(default=None)
) -> Any:
    return await _run(request, True, authorization)
