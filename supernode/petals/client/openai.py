"""A node that is an OpenAI-compatible server (vLLM, llama.cpp, text-generation-inference...).

``GET /v1/models`` for the models it serves, ``POST /v1/completions`` for a whole answer, and
the same with ``"stream": true`` for server-sent events ending with ``data: [DONE]``. A chat
that needs the node's own chat API (tools, a response format: ``GenerateParams.chat``) goes to
``POST /v1/chat/completions`` as it came, and its answer is the message's JSON (content and
tool calls); streamed, each piece is one event's delta (``chat_piece``), and
``StreamedMessage`` puts the same message JSON together from them. It shares no tokenizer:
the caller estimates token counts itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp

from supernode.petals.client.base import MAX_MESSAGE_BYTES, Answer, NodeClient, WaitClock
from supernode.petals.client.protocol import (
    Chunk,
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


MAX_STREAMED_CALLS = 128  # tool calls one streamed message may make


def chat_piece(event: dict[str, Any]) -> dict[str, Any] | None:
    """One event of a streamed chat as a piece of the stream: its ``choices[0].delta`` cut
    to ``content`` and ``tool_calls`` (each call's ``index``, ``id``, ``type``,
    ``function.name``, ``function.arguments``), and ``usage`` from the event that carries
    it; None when it carries none of them (the role, the finish)."""
    choices = event.get("choices")
    usage = event.get("usage")
    if not choices:
        if isinstance(usage, dict):
            return {"usage": {"completion_tokens": usage.get("completion_tokens")}}
        return None
    first = choices[0] if isinstance(choices, list) else None
    delta = first.get("delta") if isinstance(first, dict) else None
    if not isinstance(delta, dict):
        raise NodeFailure("a stream event has no choices[0].delta")
    out: dict[str, Any] = {}
    content = delta.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise NodeFailure("a delta's content is not text")
        if content:
            out["content"] = content
    calls = delta.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise NodeFailure("a delta's tool_calls is not a list")
        out["tool_calls"] = [_call_delta(c) for c in calls]
    if isinstance(usage, dict):  # (some servers put it on the last delta)
        out["usage"] = {"completion_tokens": usage.get("completion_tokens")}
    return out or None


def _call_delta(c: Any) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise NodeFailure("a tool call delta is not an object")
    index = c.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_STREAMED_CALLS:
        raise NodeFailure(f"a tool call delta's index is not 0 to {MAX_STREAMED_CALLS - 1}")
    out: dict[str, Any] = {"index": index}
    for key in ("id", "type"):
        if c.get(key) is not None:
            if not isinstance(c[key], str):
                raise NodeFailure(f"a tool call delta's {key} is not text")
            out[key] = c[key]
    f = c.get("function")
    if f is not None:
        if not isinstance(f, dict):
            raise NodeFailure("a tool call delta's function is not an object")
        fn = {k: f[k] for k in ("name", "arguments") if f.get(k) is not None}
        if not all(isinstance(v, str) for v in fn.values()):
            raise NodeFailure("a tool call delta's name or arguments is not text")
        out["function"] = fn
    return out


def next_call_index(piece: dict[str, Any], calls: int) -> int:
    """How many tool calls have begun once ``piece`` is taken: a call's deltas come after
    those of every call before it has begun (a node that skips one fails here, where the
    pool can still try another node; ``StreamedMessage`` then takes the order as given)."""
    for c in piece.get("tool_calls", ()):
        if c["index"] > calls:
            raise NodeFailure(f"tool call {c['index']} streamed before call {calls}")
        calls = max(calls, c["index"] + 1)
    return calls


class StreamedMessage:
    """A streamed chat answer put together from its pieces (``chat_piece``), as the same
    answer whole would carry it: ``text()`` is ``message_text``'s form (what is stored,
    hashed and audited), ``completion_tokens`` the node's count when it gave one."""

    def __init__(self) -> None:
        self.content: str | None = None
        self.calls: list[dict[str, Any]] = []
        self.completion_tokens: int | None = None

    def add(self, piece: dict[str, Any]) -> dict[str, Any]:
        """Take a piece (in order: ``next_call_index``); returns the delta for the client
        (empty for the usage)."""
        delta = dict(piece)
        usage = delta.pop("usage", None)
        if usage is not None:
            self.completion_tokens = int_or_none(usage.get("completion_tokens"))
        if "content" in delta:
            self.content = (self.content or "") + delta["content"]
        for c in delta.get("tool_calls", ()):
            i = c["index"]
            if i == len(self.calls):
                self.calls.append(
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
            call = self.calls[i]
            call["id"] = c.get("id", call["id"])
            call["type"] = c.get("type", call["type"])
            fn = c.get("function", {})
            call["function"]["name"] += fn.get("name", "")
            call["function"]["arguments"] += fn.get("arguments", "")
        return delta

    @property
    def empty(self) -> bool:
        return self.content is None and not self.calls

    def text(self) -> str:
        message = {"content": self.content, "tool_calls": self.calls or None}
        return message_text({"choices": [{"message": message}]})


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
    ) -> AsyncIterator[Chunk]:
        if params.chat:
            path = "/v1/chat/completions"
            body = {**chat_body(model, prompt, params), "stream": True}
            body["stream_options"] = {"include_usage": True}
        else:
            path, body = "/v1/completions", {**openai_body(model, prompt, params), "stream": True}
        # not the session's whole-request bound: the clock bounds each wait and their sum
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.stream_idle_s
        )
        request = self._session(side=True).post(path, json=body, timeout=timeout)
        calls = 0  # a chat's tool calls begun so far
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
                    if not params.chat:
                        yield choice_text(event)
                    elif (piece := chat_piece(event)) is not None:
                        calls = next_call_index(piece, calls)
                        yield piece
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
