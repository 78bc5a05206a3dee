"""A node speaking the Petals HTTP API as chat.petals.dev has it (``supernode petals-node`` too).

``POST /api/v1/generate`` (form fields) for a whole answer, the WebSocket ``/api/v2/generate``
for a stream, ``GET /health`` for the models it serves, its limits and whether it scores;
``POST /api/v1/tokenize`` and ``GET /api/v1/tokenizer`` for token counts; ``POST
/api/v1/score`` for an auditor's check of a claimed output. Refusals are ``"ok": false``
answers whose ``error`` code says whether the request or the node was at fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from supernode.petals.client.base import (
    MAX_MESSAGE_BYTES,
    Answer,
    NodeClient,
    NodeConfig,
    Timeouts,
    WaitClock,
)
from supernode.petals.client.protocol import (
    GenerateParams,
    NodeFailure,
    NodeRejected,
    error_text,
    int_or_none,
    judge,
    parse_json,
    short,
)

REJECT_CODES = frozenset({"bad_request", "payload_too_large", "refused"})  # the request's fault
TOKENIZE_TIMEOUT_S = 5.0  # a tokenizer answer (the caller over-estimates without one)
TOKENIZER_FETCH_TIMEOUT_S = 30.0  # a model's whole tokenizer.json (megabytes for big ones)
TOKENIZER_MAX_BYTES = 64_000_000


def petals_fields(params: GenerateParams) -> dict[str, Any]:
    """chat.petals.dev's field names; ``do_sample`` as 0/1, unset options left out."""
    fields: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": int(params.do_sample),
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "repetition_penalty": params.repetition_penalty,
        "seed": params.seed,
        "priority": "low" if params.low_priority else None,  # the node's default is normal
    }
    return {k: v for k, v in fields.items() if v is not None}


def judge_event(event: dict[str, Any], url: str) -> None:
    """A Petals ``"ok": false`` message: the request's fault or the node's."""
    code = event.get("error")
    if isinstance(code, str) and code in REJECT_CODES:
        reason = event.get("reason")
        raise NodeRejected(
            error_text(event), reason=reason if isinstance(reason, str) else None, node_url=url
        )
    raise NodeFailure(f"error event: {error_text(event)}")


def check_score(body: dict[str, Any]) -> None:
    """A score answer has its verdicts; ``NodeFailure`` otherwise."""
    counts = [int_or_none(body.get(k)) for k in ("prompt_tokens", "tokens")]
    marks = [body.get(k) for k in ("first_failure", "first_outside_top_k")]
    end, positions = body.get("end"), body.get("positions")
    if (
        None in counts
        or not all(m is None or int_or_none(m) is not None for m in marks)
        or not isinstance(end, dict)
        or not isinstance(end.get("eos_is_top"), bool)
        or not isinstance(positions, list)
    ):
        raise NodeFailure("the score answer lacks its verdicts")


def _logprobs_ok(items: Any) -> bool:
    return isinstance(items, list) and all(
        isinstance(t, dict)
        and isinstance(t.get("token"), str)
        and isinstance(t.get("logprob"), int | float)
        and isinstance(t.get("top"), list)
        and all(
            isinstance(a, list)
            and len(a) == 2
            and isinstance(a[0], str)
            and isinstance(a[1], int | float)
            for a in t["top"]
        )
        for t in items
    )


class PetalsNodeClient(NodeClient):
    """A Petals HTTP API node: whole answers over HTTP, streams over a WebSocket session."""

    kind = "petals"
    health_path = "/health"

    def __init__(self, config: NodeConfig, timeouts: Timeouts) -> None:
        super().__init__(config, timeouts)
        self.sockets: set[aiohttp.ClientWebSocketResponse] = set()  # open streams

    async def close(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        self.sockets.clear()
        await super().close()

    def read_health(self, body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
        if body.get("status", "ok") != "ok":
            raise NodeFailure(f"status is {short(body.get('status'))}")
        models = body.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise NodeFailure("/health has no models list")
        limits = {k: v for k in ("max_new_tokens", "max_length") if (v := int_or_none(body.get(k)))}
        self.can_score = body.get("can_score") is True  # nodes older than /api/v1/score: no
        return tuple(models), limits

    async def _post_form(self, path: str, form: dict[str, Any]) -> dict[str, Any]:
        fields = {k: str(v) for k, v in form.items()}
        async with self._session().post(path, data=fields) as resp:
            return judge(resp.status, await resp.read(), self.url)

    async def _generate(self, model: str, prompt: str, params: GenerateParams) -> Answer:
        form = {"model": model, "inputs": prompt, **petals_fields(params)}
        body = await self._post_form("/api/v1/generate", form)
        if body.get("ok") is not True:
            judge_event(body, self.url)
        text = body.get("outputs")
        if not isinstance(text, str):
            raise NodeFailure("the answer has no text outputs")
        return Answer(
            text, int_or_none(body.get("input_tokens")), int_or_none(body.get("output_tokens"))
        )

    async def _score(
        self,
        model: str,
        prompt: str,
        output: str,
        *,
        repetition_penalty: float | None,
        top_k: int | None,
        tolerance: float | None,
        logprobs: int | None = None,
    ) -> dict[str, Any] | None:
        if not self.can_score:
            return None
        form = {
            "model": model,
            "inputs": prompt,
            "outputs": output,
            "repetition_penalty": repetition_penalty,
            "top_k": top_k,
            "tolerance": tolerance,
            "logprobs": logprobs,
            "priority": "low" if logprobs is None else "normal",  # audits wait; users do not
        }
        body = await self._post_form(
            "/api/v1/score", {k: v for k, v in form.items() if v is not None}
        )
        if body.get("ok") is not True:
            judge_event(body, self.url)
        check_score(body)
        if logprobs is not None and not _logprobs_ok(body.get("logprobs")):
            raise NodeFailure("the score answer lacks the logprobs asked for")
        return body

    async def tokenize(self, model: str, text: str) -> int | None:
        try:
            async with asyncio.timeout(TOKENIZE_TIMEOUT_S):
                body = await self._post_form("/api/v1/tokenize", {"model": model, "inputs": text})
        except (NodeFailure, NodeRejected, aiohttp.ClientError, OSError, TimeoutError):
            return None
        count = body.get("token_count")
        return count if body.get("ok") is True and int_or_none(count) is not None else None

    async def tokenizer_json(self, model: str) -> str | None:
        if self.session is None:
            return None
        try:
            async with asyncio.timeout(TOKENIZER_FETCH_TIMEOUT_S):
                async with self.session.get("/api/v1/tokenizer", params={"model": model}) as resp:
                    if resp.status != 200:
                        return None
                    raw = await resp.content.read(TOKENIZER_MAX_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if len(raw) > TOKENIZER_MAX_BYTES:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    async def _stream(
        self, model: str, prompt: str, params: GenerateParams, clock: WaitClock
    ) -> AsyncIterator[str]:
        clock.last_limit = self.timeouts.connect_s
        async with asyncio.timeout(self.timeouts.connect_s):  # TCP connect and the handshake
            ws = await self._session(side=True).ws_connect(
                "/api/v2/generate",
                timeout=aiohttp.ClientWSTimeout(ws_close=self.timeouts.connect_s),
                max_msg_size=MAX_MESSAGE_BYTES,
            )
        self.sockets.add(ws)
        try:
            session: dict[str, Any] = {"type": "open_inference_session", "model": model}
            if "max_length" in self.limits:
                session["max_length"] = self.limits["max_length"]
            await ws.send_str(json.dumps(session))
            opened = await _receive(ws, clock, "the session reply")
            if opened.get("ok") is not True:
                judge_event(opened, self.url)
            step = {"type": "generate", "inputs": prompt, **petals_fields(params)}
            await ws.send_str(json.dumps(step))
            while True:
                event = await _receive(ws, clock, "a stream message")
                if event.get("ok") is not True:
                    judge_event(event, self.url)
                text = event.get("outputs", "")
                if not isinstance(text, str):
                    raise NodeFailure("a stream message has no text outputs")
                yield text
                if event.get("stop"):
                    return
        finally:
            self.sockets.discard(ws)
            await ws.close()  # after a timed-out wait it does not wait for the node's reply


async def _receive(
    ws: aiohttp.ClientWebSocketResponse, clock: WaitClock, what: str
) -> dict[str, Any]:
    """The next message as a JSON object; the node's pings are answered while waiting."""
    msg = await clock.wait(ws.receive())
    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return parse_json(msg.data, what)
    if msg.type is aiohttp.WSMsgType.ERROR:
        raise NodeFailure(f"{what}: {type(msg.data).__name__}: {short(msg.data)}")
    raise NodeFailure(f"the stream closed before its end (code {ws.close_code})")
