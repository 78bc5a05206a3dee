"""A node that is an OpenAI-compatible server (vLLM, llama.cpp, text-generation-inference...).

``GET /v1/models`` for the models it serves, ``POST /v1/completions`` for a whole answer, and
the same with ``"stream": true`` for server-sent events ending with ``data: [DONE]``. A chat
that needs the node's own chat API (tools, a response format: ``GenerateParams.chat``) goes to
``POST /v1/chat/completions`` as it came, and its answer is the message's JSON (content and
tool calls). It shares no tokenizer: the caller estimates token counts itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp

from supernode.petals.client.base import MAX_MESSAGE_BYTES, Answer, NodeClient, WaitClock
from supernode.petals.client.protocol import (
    GenerateParams,
    NodeFailure,
    error_text,
    int_or_none,
    judge,
    parse_json,
)


def openai_body(model: str, prompt: str, params: GenerateParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.do_sample else 0.0,  # 0: greedy
    }
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def chat_body(model: str, chat: str, params: GenerateParams) -> dict[str, Any]:
    """The node's /v1/chat/completions body: the chat's own fields (messages, tools...) with
    the sampling and length of ``params``."""
    body = {**json.loads(chat), **openai_body(model, "", params)}
    del body["prompt"]
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def message_text(body: dict[str, Any]) -> str:
    """A chat answer's message as its one text form: ``{"content", "tool_calls"}``, keys
    sorted (what is stored, hashed and audited)."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise NodeFailure("the answer has no choices[0].message")
    content, calls = message.get("content"), message.get("tool_calls")
    if not (content is None or isinstance(content, str)):
        raise NodeFailure("the message's content is not text")
    if not (calls is None or isinstance(calls, list)):
        raise NodeFailure("the message's tool_calls is not a list")
    if content is None and not calls:
        raise NodeFailure("the message has neither content nor tool calls")
    out = {"content": content, "tool_calls": calls or None}
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def choice_text(body: dict[str, Any]) -> str:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    text = first.get("text") if isinstance(first, dict) else None
    if not isinstance(text, str):
        raise NodeFailure("the answer has no choices[0].text")
    return text


class OpenAINodeClient(NodeClient):
    """An OpenAI-compatible completions server."""

    kind = "openai"
    takes_chat = True
    health_path = "/v1/models"

    def read_health(self, body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
        data = body.get("data")
        if not isinstance(data, list):
            raise NodeFailure("/v1/models has no data list")
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        return tuple(i for i in ids if isinstance(i, str)), {}

    async def _generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        if params.chat:
            path, request = "/v1/chat/completions", chat_body(model, prompt, params)
        else:
            path, request = "/v1/completions", openai_body(model, prompt, params)
        async with self._session().post(path, json=request) as resp:
            body = judge(resp.status, await resp.read(), self.url)
        if "error" in body:
            raise NodeFailure(f"error: {error_text(body)}")
        text = message_text(body) if params.chat else choice_text(body)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Answer(
            text,
            int_or_none(usage.get("prompt_tokens")),
            int_or_none(usage.get("completion_tokens")),
        )

    async def _stream(
        self, model: str, prompt: str, params: GenerateParams, clock: WaitClock
    ) -> AsyncIterator[str]:
        body = {**openai_body(model, prompt, params), "stream": True}
        # not the session's whole-request bound: the clock bounds each wait and their sum
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.stream_idle_s
        )
        request = self._session(side=True).post("/v1/completions", json=body, timeout=timeout)
        async with await clock.wait(request) as resp:  # the wait for the headers
            if not 200 <= resp.status < 300:
                judge(resp.status, await clock.wait(resp.read()), self.url)
            async with aclosing(_lines(resp.content, clock)) as lines:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = parse_json(data, "a stream event")
                    if "error" in event:
                        raise NodeFailure(f"error event: {error_text(event)}")
                    yield choice_text(event)
            raise NodeFailure("the stream ended without [DONE]")


async def _lines(content: aiohttp.StreamReader, clock: WaitClock) -> AsyncIterator[str]:
    """The body's lines (without their ends), each piece of it read within the clock."""
    pending = b""
    while piece := await clock.wait(content.readany()):
        pending += piece
        lines = pending.splitlines(keepends=True)
        # a line without its end yet waits for the next piece ("\r\n" split in two gives an
        # extra blank line, which server-sent events ignore)
        pending = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
        if len(pending) > MAX_MESSAGE_BYTES:
            raise NodeFailure(f"a stream line is over {MAX_MESSAGE_BYTES} bytes")
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")
