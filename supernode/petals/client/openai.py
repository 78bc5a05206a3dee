"""A node that is an OpenAI-compatible server (vLLM, llama.cpp, text-generation-inference...).

``GET /v1/models`` for the models it serves, ``POST /v1/completions`` for a whole answer, and
the same with ``"stream": true`` for server-sent events ending with ``data: [DONE]``. It shares
no tokenizer: the caller estimates token counts itself.
"""

from __future__ import annotations

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
    health_path = "/v1/models"

    def read_health(self, body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
        data = body.get("data")
        if not isinstance(data, list):
            raise NodeFailure("/v1/models has no data list")
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        return tuple(i for i in ids if isinstance(i, str)), {}

    async def _generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        request = openai_body(model, prompt, params)
        async with self._session().post("/v1/completions", json=request) as resp:
            body = judge(resp.status, await resp.read(), self.url)
        if "error" in body:
            raise NodeFailure(f"error: {error_text(body)}")
        text = choice_text(body)
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
