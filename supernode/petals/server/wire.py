"""The Petals API's request fields: parsing them, and reading a v1 request's body.

Field names are chat.petals.dev's. Every refusal is a ``SupernodeError`` with a 4xx status and a
reason; nothing here raises anything else for bad input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from supernode.crypto.wire_json import loads
from supernode.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from supernode.petals.server.engine import Sampling

MAX_INPUT_CHARS = 100_000  # longest `inputs` text
MAX_BODY_BYTES = 1_000_000  # largest v1 request body or v2 message
PRIORITIES = ("normal", "low")  # the worker's lanes: low waits until no normal job is in line


def short(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_int(values: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    """An optional integer field in ``[lo, hi]``; a clear 400 otherwise."""
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError
        value = int(raw) if isinstance(raw, int | float) else int(str(raw).strip())
    except (TypeError, ValueError):
        detail = f"{name} must be an integer, got {short(raw)}"
        raise BadRequest(detail, reason="bad_number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be from {lo} to {hi}, got {value}", reason="out_of_range")
    return value


def parse_float(
    values: Mapping[str, Any], name: str, *, lo: float, hi: float, lo_included: bool = False
) -> float | None:
    """An optional finite number in ``(lo, hi]`` (``[lo, hi]`` with ``lo_included``)."""
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
    except (TypeError, ValueError):
        detail = f"{name} must be a number, got {short(raw)}"
        raise BadRequest(detail, reason="bad_number") from None
    above = lo <= value if lo_included else lo < value
    if not math.isfinite(value) or not above or value > hi:
        least = "at least" if lo_included else "over"
        raise BadRequest(
            f"{name} must be {least} {lo} and at most {hi}, got {short(raw)}",
            reason="out_of_range",
        )
    return value


def parse_bool(values: Mapping[str, Any], name: str) -> bool:
    raw = values.get(name)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be 0/1 or true/false, got {short(raw)}", reason="bad_bool")


def parse_sampling(values: Mapping[str, Any]) -> Sampling:
    return Sampling(
        do_sample=parse_bool(values, "do_sample"),
        temperature=parse_float(values, "temperature", lo=0.0, hi=100.0),
        top_k=parse_int(values, "top_k", 0, 1_000_000),
        top_p=parse_float(values, "top_p", lo=0.0, hi=1.0),
        repetition_penalty=parse_float(values, "repetition_penalty", lo=0.0, hi=100.0),
        seed=parse_int(values, "seed", 0, 2**63 - 1),
    )


def parse_inputs(values: Mapping[str, Any], *, required: bool) -> str | None:
    raw = values.get("inputs")
    if raw is None:
        if required:
            raise BadRequest("inputs is missing", reason="empty_inputs")
        return None
    if not isinstance(raw, str):
        raise BadRequest("inputs must be text", reason="bad_inputs")
    if len(raw) > MAX_INPUT_CHARS:
        raise PayloadTooLarge(f"inputs is {len(raw)} characters, over {MAX_INPUT_CHARS}")
    if required and not raw.strip():
        raise BadRequest("inputs is empty", reason="empty_inputs")
    return raw


def parse_outputs(values: Mapping[str, Any]) -> str:
    """``outputs`` of a score request: the claimed text (empty is allowed: a model may end at
    once)."""
    raw = values.get("outputs")
    if not isinstance(raw, str):
        detail = "outputs is missing" if raw is None else "outputs must be text"
        raise BadRequest(detail, reason="bad_outputs")
    if len(raw) > MAX_INPUT_CHARS:
        raise PayloadTooLarge(f"outputs is {len(raw)} characters, over {MAX_INPUT_CHARS}")
    return raw


def parse_priority(values: Mapping[str, Any], *, default: str) -> bool:
    """``priority``: "normal" or "low" (``default`` when absent); True for the low lane."""
    raw = values.get("priority")
    if raw is None or raw == "":
        raw = default
    if raw not in PRIORITIES:
        detail = f"priority must be one of {', '.join(PRIORITIES)}, got {short(raw)}"
        raise BadRequest(detail, reason="bad_priority")
    return raw == "low"


def parse_stop_sequences(values: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    one = values.get("stop_sequence")
    extra = values.get("extra_stop_sequences") or []
    for s in ([one] if one is not None else []) + (extra if isinstance(extra, list) else [extra]):
        if not isinstance(s, str) or not s or len(s) > 100:
            raise BadRequest(f"a stop sequence must be 1 to 100 characters, got {short(s)}")
        found.append(s)
    return tuple(found)


# --- the body ----------------------------------------------------------------------


async def read_values(request: Request) -> dict[str, Any]:
    """chat.petals.dev reads ``request.values``: query arguments, then form fields (or JSON)."""
    values: dict[str, Any] = dict(request.query_params)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body over {MAX_BODY_BYTES} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if kind == "application/json":
            data = loads(text) if text.strip() else {}
            if not isinstance(data, dict):
                raise BadRequest("the JSON body must be an object", reason="bad_body")
            values.update(data)
        elif kind in ("", "application/x-www-form-urlencoded", "text/plain"):
            values.update(parse_qsl(text, keep_blank_values=True, max_num_fields=100))
        else:
            raise UnsupportedMediaType(
                f"send application/x-www-form-urlencoded or application/json, not {kind}"
            )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"unreadable body: {type(exc).__name__}", reason="bad_body") from None
    return values
