"""The node protocols as this daemon speaks them: what it asks (generation parameters, the
Petals form fields, the OpenAI body) and how it reads the answers (a usable JSON object,
``NodeRejected`` when the request was at fault, ``NodeFailure`` when the node was), with
short reasons for logs and errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from supernode.crypto.wire_json import loads
from supernode.errors import BadRequest

REJECT_STATUSES = frozenset({400, 413, 422})  # the request's fault; any other non-2xx is the node's
REJECT_CODES = frozenset({"bad_request", "payload_too_large", "refused"})  # the same, on the wire
MAX_REASON_CHARS = 300  # of a node's own error text, kept in errors and logs


@dataclass(frozen=True)
class GenerateParams:
    """How much to generate and how to pick tokens (greedy unless ``do_sample``)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None


class NodeRejected(BadRequest):
    """A node refused the request's parameters (e.g. max_new_tokens over its limit)."""

    def __init__(self, detail: str, *, reason: str | None = None, node_url: str = "") -> None:
        super().__init__(detail, reason=reason or "node_rejected")
        self.node_url = node_url


class NodeFailure(Exception):
    """The node did not give a usable answer; it counts toward the node's breaker."""


def short(text: object) -> str:
    s = str(text).strip() or type(text).__name__
    return s if len(s) <= MAX_REASON_CHARS else s[: MAX_REASON_CHARS - 3] + "..."


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_text(body: object) -> str:
    """The human part of an error body: Petals ``traceback``, OpenAI ``error.message``..."""
    if isinstance(body, dict):
        for key in ("traceback", "error", "detail", "message"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return short(value if isinstance(value, str) else json.dumps(value))
    return short(body)


def parse_json(raw: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = loads(raw)
    except ValueError:
        raise NodeFailure(f"{what} is not JSON: {short(raw[:80])}") from None
    if not isinstance(data, dict):
        raise NodeFailure(f"{what} is not a JSON object")
    return data


def judge_response(resp: httpx.Response, url: str) -> dict[str, Any]:
    """A 2xx JSON object, or the right exception for the status."""
    return judge(resp.status_code, resp.content, url)


def judge(status: int, content: bytes, url: str) -> dict[str, Any]:
    try:
        body: object = loads(content)
    except ValueError:
        body = content.decode("utf-8", "replace")
    if status in REJECT_STATUSES:
        reason = body.get("reason") if isinstance(body, dict) else None
        raise NodeRejected(
            error_text(body), reason=reason if isinstance(reason, str) else None, node_url=url
        )
    if not 200 <= status < 300:
        raise NodeFailure(f"HTTP {status}: {error_text(body)}")
    if not isinstance(body, dict):
        raise NodeFailure(f"the answer is not a JSON object: {short(body)}")
    return body


def judge_event(event: dict[str, Any], url: str) -> None:
    """A Petals ``"ok": false`` message: the request's fault or the node's."""
    code = event.get("error")
    if isinstance(code, str) and code in REJECT_CODES:
        reason = event.get("reason")
        raise NodeRejected(
            error_text(event), reason=reason if isinstance(reason, str) else None, node_url=url
        )
    raise NodeFailure(f"error event: {error_text(event)}")


def petals_fields(params: GenerateParams) -> dict[str, Any]:
    """chat.petals.dev's field names; ``do_sample`` as 0/1, unset options left out."""
    fields: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": int(params.do_sample),
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "repetition_penalty": params.repetition_penalty,
    }
    return {k: v for k, v in fields.items() if v is not None}


def openai_body(model: str, prompt: str, params: GenerateParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.do_sample else 0.0,  # 0: greedy
    }
    if params.top_p is not None:
        body["top_p"] = params.top_p
    return body


def choice_text(body: dict[str, Any]) -> str:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    text = first.get("text") if isinstance(first, dict) else None
    if not isinstance(text, str):
        raise NodeFailure("the answer has no choices[0].text")
    return text


def read_health(body: dict[str, Any], kind: str) -> tuple[tuple[str, ...], dict[str, int]]:
    if kind == "openai":
        data = body.get("data")
        if not isinstance(data, list):
            raise NodeFailure("/v1/models has no data list")
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        return tuple(i for i in ids if isinstance(i, str)), {}
    if body.get("status", "ok") != "ok":
        raise NodeFailure(f"status is {short(body.get('status'))}")
    models = body.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise NodeFailure("/health has no models list")
    limits = {k: v for k in ("max_new_tokens", "max_length") if (v := int_or_none(body.get(k)))}
    return tuple(models), limits


def describe(exc: BaseException, limit_s: float, connect_s: float, what: str) -> str:
    """A short reason for logs and errors: which wait failed and how."""
    if isinstance(exc, httpx.ConnectTimeout | aiohttp.ConnectionTimeoutError):
        return f"no connection within {connect_s:g} s"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no {what} within {limit_s:g} s"
    if isinstance(exc, httpx.ConnectError | aiohttp.ClientConnectorError):
        return f"cannot connect: {short(exc)}"
    if isinstance(exc, NodeRejected):
        return f"refused: {exc.detail}"
    if isinstance(exc, NodeFailure):
        return str(exc)
    return f"{type(exc).__name__}: {short(exc)}"
