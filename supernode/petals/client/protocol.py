"""What every kind of node client shares: the generation parameters it is asked for, and how
it reads an answer (a usable JSON object, ``NodeRejected`` when the request was at fault,
``NodeFailure`` when the node was), with short reasons for logs and errors. Each kind's own
request bodies and answer fields are in its module (``petals.py``, ``openai.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from supernode.crypto.wire_json import loads
from supernode.errors import NodeFailure, NodeRejected

REJECT_STATUSES = frozenset({400, 413, 422})  # the request's fault; any other non-2xx is the node's
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
    seed: int | None = None  # the sampler's seed (the same seed, the same sampled text)
    # cut by the pool (supernode.inference.stops), not sent to the node
    stop: tuple[str, ...] = ()
    low_priority: bool = False  # in the node's low lane (an audit's re-run); Petals nodes only
    # the prompt is a chat (JSON: messages, tools, tool_choice, response_format...) for an
    # OpenAI-compatible node's /v1/chat/completions, and the text its answer's message
    # (JSON: content, tool_calls); stop sequences go to that node
    chat: bool = False


def short(text: object) -> str:
    s = str(text).strip() or type(text).__name__
    return s if len(s) <= MAX_REASON_CHARS else s[: MAX_REASON_CHARS - 3] + "..."


# What a node's stream yields: text, or for a chat sent to an OpenAI-compatible node's chat
# API one event's delta (``openai.chat_piece``: ``content``, ``tool_calls``, ``usage``).
Chunk = str | dict[str, Any]


def int_or_none(value: object) -> int | None:
    """A count or a position a node gave (an int, 0 or more); None for anything else, so
    that a negative count can never lower a charge."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


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


def judge(status: int, content: bytes, url: str) -> dict[str, Any]:
    """A 2xx JSON object, or the right exception for the status."""
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


def describe(exc: BaseException, limit_s: float, connect_s: float, what: str) -> str:
    """A short reason for logs and errors: which wait failed and how."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"no connection within {connect_s:g} s"
    if isinstance(exc, TimeoutError):  # aiohttp's socket read timeout too
        return f"no {what} within {limit_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {short(exc)}"
    if isinstance(exc, NodeRejected):
        return f"refused: {exc.detail}"
    if isinstance(exc, NodeFailure):
        return str(exc)
    return f"{type(exc).__name__}: {short(exc)}"
