"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streamed
and not). Errors use OpenAI's shape, {"error": {"message", "type", "code"}}, so any
OpenAI SDK reports them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supernode.api.deps import body_doc, json_body
from supernode.api.guard import read_json
from supernode.errors import SupernodeError
from supernode.inference.openai import Job, chat_prompt
from supernode.node import Supernode

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class CompletionReq(_Req):
    prompt: str = Field(min_length=1)


class ChatReq(_Req):
    messages: list[dict[str, Any]] = Field(min_length=1)


def _oai_error(status: int, message: str, code: str | None) -> JSONResponse:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "insufficient_quota",
        403: "permission_error",
        404: "not_found_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "api_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code, "param": None}},
        status_code=status,
    )


def _status(exc: SupernodeError) -> int:
    if exc.reason in ("insufficient_credits", "delegation_cap", "over_max_cost"):
        return 402
    return exc.status


async def _body(request: Request, model: type[_Req]) -> _Req:
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e.get("loc", ()))
        raise _BadBody(f"{where}: {e['msg']}") from exc


class _BadBody(Exception):
    pass


def _node(request: Request) -> Supernode:
    return request.app.state.node


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    node = _node(request)
    return {
        "object": "list",
        "data": [
            {
                "id": m["model"],
                "object": "model",
                "created": int(node.started_at),
                "owned_by": node.address,
                "pricing": {
                    "credits_per_input_token": m["credits_per_input_token"],
                    "credits_per_output_token": m["credits_per_output_token"],
                },
            }
            for m in node.inference.model_menu()
        ],
    }


async def _run(request: Request, chat: bool, authorization: str | None) -> Any:
    node = _node(request)
    gw = node.openai
    started = time.perf_counter()
    try:
        body = await _body(request, ChatReq if chat else CompletionReq)
        d = gw.delegation(authorization)
        prompt = chat_prompt(body.messages) if isinstance(body, ChatReq) else body.prompt  # type: ignore[attr-defined]
        job = await gw.prepare(
            d,
            body.model,
            prompt,
            body.max_completion_tokens or body.max_tokens,
            body.temperature,
            body.top_p,
        )
        if body.stream:
            return StreamingResponse(
                _sse(gw, d, job, chat),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        prepared = time.perf_counter()
        text, usage = await gw.complete(d, job)
    except _BadBody as exc:
        return _oai_error(400, str(exc), "invalid_request")
    except SupernodeError as exc:
        return _oai_error(_status(exc), exc.detail, exc.reason or exc.code)
    cid = ("chatcmpl-" if chat else "cmpl-") + job.request_id[2:26]
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(usage, job), "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    resp = json_body(
        {
            "id": cid,
            "object": "chat.completion" if chat else "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": [choice],
            "usage": usage,
            "supernode": {"request_id": job.request_id, "executor": node.address},
        }
    )
    resp.headers["server-timing"] = server_timing(started, prepared, job.timing)
    return resp


def server_timing(started: float, prepared: float, steps: dict[str, float]) -> str:
    """The Server-Timing header: ``prepare`` (parse, key, quote), then from the start of
    the run ``certify`` (the spend certified) and ``generate`` (the text back from the
    node; they overlap), and ``total``, in ms."""
    parts = [f"prepare;dur={(prepared - started) * 1000:.2f}"]
    parts += [f"{k};dur={v:.2f}" for k, v in steps.items()]
    parts.append(f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
    return ", ".join(parts)


def _finish(usage: dict[str, int], job: Job) -> str:
    return "length" if usage["completion_tokens"] >= job.params.max_new_tokens else "stop"


async def _sse(gw: Any, d: Any, job: Job, chat: bool) -> AsyncIterator[bytes]:
    cid = ("chatcmpl-" if chat else "cmpl-") + job.request_id[2:26]
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            c["delta"] = {"content": text} if text is not None else {}
        else:
            c["text"] = text or ""
        return {
            "id": cid,
            "object": kind,
            "created": job.created,
            "model": job.model,
            "choices": [c],
        }

    try:
        if chat:
            first = chunk(None, None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            started = False
        async for piece in gw.stream(d, job):
            if chat and not started:
                yield event(first)
                started = True
            yield event(chunk(piece, None))
        yield event(chunk(None, "stop"))
        yield b"data: [DONE]\n\n"
    except SupernodeError as exc:
        yield event(
            {"error": {"message": exc.detail, "type": "api_error", "code": exc.reason or exc.code}}
        )


@router.post("/completions", openapi_extra=body_doc(CompletionReq.model_json_schema()))
async def completions(request: Request, authorization: str | None = Header(default=None)) -> Any:
    return await _run(request, False, authorization)


@router.post("/chat/completions", openapi_extra=body_doc(ChatReq.model_json_schema()))
async def chat_completions(
    request: Request, authorization: str | None = Header(default=None)
) -> Any:
    return await _run(request, True, authorization)
