"""Usage requests: what the user asks to run, and its checks.

`inference_usage_request`, signed by the pack's owner: {pack_id, model, input, params,
max_cost}; params: max_new_tokens (required), do_sample, temperature, top_k, top_p,
repetition_penalty, seed, stop (up to 4 texts: the output ends before the first).
request_id = keccak(the usage request's id): a retry is the same request."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from supernode.crypto.envelope import Hex32, Payload
from supernode.crypto.hashing import keccak
from supernode.errors import BadRequest, Refused
from supernode.inference.menu import ModelEntry
from supernode.ledger import MAX_INTEGER
from supernode.petals.client.pool import GenerateParams
from supernode.petals.client.stops import MAX_STOP_CHARS, MAX_STOPS

USAGE_REQUEST = "inference_usage_request"
USAGE_RESPONSE = "inference_usage_response"
PARAM_FIELDS = {
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
    "stop",
    "chat",  # the input is a chat for the node's own chat API (OpenAI path only)
}
# floats are not allowed in signed payloads: sampling knobs travel as thousandths
MILLI = 1000


def request_id_for(usage_request_id: str) -> str:
    return "0x" + keccak(bytes.fromhex(usage_request_id[2:])).hex()


def _int(p: dict[str, Any], name: str, low: int, high: int, default: int | None) -> int | None:
    v = p.get(name, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise Refused(f"{name} must be an integer from {low} to {high}", reason="bad_params")
    return v


def parse_params(params: Any, entry: ModelEntry) -> GenerateParams:
    """Params within the model's limits. Temperature, top_p and repetition_penalty are
    given in thousandths (integers), e.g. temperature_milli... as `temperature: 700`."""
    if not isinstance(params, dict) or not set(params) <= PARAM_FIELDS:
        raise BadRequest(f"params: an object with keys from {sorted(PARAM_FIELDS)}")
    max_new = _int(params, "max_new_tokens", 1, entry.max_new_tokens, None)
    if max_new is None:
        raise BadRequest("params.max_new_tokens is required")
    do_sample = params.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise BadRequest("params.do_sample must be true or false")
    temp = _int(params, "temperature", 1, 5 * MILLI, MILLI)
    top_k = _int(params, "top_k", 1, 1000, None)
    top_p = _int(params, "top_p", 1, MILLI, None)
    rep = _int(params, "repetition_penalty", 1, 5 * MILLI, None)
    seed = _int(params, "seed", 0, MAX_INTEGER, None)
    stop = params.get("stop", [])
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOPS
        or not all(isinstance(x, str) and 1 <= len(x) <= MAX_STOP_CHARS for x in stop)
    ):
        raise Refused(
            f"stop must be a list of at most {MAX_STOPS} texts of 1 to {MAX_STOP_CHARS} characters",
            reason="bad_params",
        )
    chat = params.get("chat", False)
    if not isinstance(chat, bool):
        raise BadRequest("params.chat must be true or false")
    return GenerateParams(
        max_new_tokens=max_new,
        do_sample=do_sample,
        temperature=(temp or MILLI) / MILLI,
        top_k=top_k,
        top_p=top_p / MILLI if top_p else None,
        repetition_penalty=rep / MILLI if rep else None,
        seed=seed,
        stop=tuple(stop),
        chat=chat,
    )


class UsageRequestPayload(Payload):
    """`inference_usage_request`, signed by the pack's owner: run ``input`` on ``model``
    with ``params`` (checked against the model's limits: parse_params), for at most
    ``max_cost`` credits of the pack."""

    pack_id: Hex32
    model: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    input: Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
    params: dict[str, Any]
    max_cost: Annotated[int, Field(ge=1, le=MAX_INTEGER)]
