"""Judging a result an executor served to an auditor: against its signed summary (hash,
token counts), then against the auditor's own node (a greedy re-run, and where the text
differs, the executor's tokens scored in one forward pass; a sampled text's tokens within
the top k). See docs/reputation.md, "The audit"."""

from __future__ import annotations

from typing import Any

from supernode.crypto.envelope import Hex32, Payload
from supernode.errors import SupernodeError
from supernode.inference.menu import Menu
from supernode.inference.recording import result_hash
from supernode.inference.usage import parse_params
from supernode.petals.client.pool import GenerateParams, NodePool
from supernode.petals.client.stops import cut
from supernode.reputation import rules

SAMPLING_TOP_K = 50  # what a Petals node samples from when a request sets no top_k


class AuditResultPayload(Payload):
    request_id: Hex32
    model: str
    prompt: str
    params: dict[str, Any]
    output: str
    result_hash: Hex32
    input_tokens: int
    output_tokens: int


def count_slack(n: int) -> int:
    """How far two honest token counts of one text may differ (a tokenizer round trip,
    a start token): 2 tokens and 5%."""
    return 2 + n // 20


async def judge(
    served: AuditResultPayload,
    summary: dict[str, Any] | None,
    pool: NodePool,
    menu: Menu,
    tolerance: float,
) -> tuple[str, int | None, str]:
    """The verdict on a served result, against the executor's stored ``summary``:
    (verdict, first failing position, detail). SupernodeError when the local node
    fails (the audit is tried again later)."""
    if summary is None:
        return rules.SKIPPED, None, "no summary here"
    digest = result_hash(served.output)
    if digest != served.result_hash or digest != summary["result_hash"]:
        return rules.FAIL, 0, "the served output is not the one its signed summary names"
    if summary["output_tokens"] != served.output_tokens:
        return rules.FAIL, 0, "the served token count is not its signed summary's"
    if not pool.models().get(served.model):
        return rules.SKIPPED, None, f"no local node serves {served.model}"
    try:
        params = parse_params(served.params, menu.entry(served.model))
    except SupernodeError as exc:
        return rules.SKIPPED, None, f"params not runnable here: {exc}"
    if params.chat:
        return await _judge_chat(served, params, pool)
    if cut(served.output, params.stop)[1]:
        return rules.FAIL, 0, "the output goes past one of its stop sequences"
    counted = await pool.tokenize(served.model, served.output) if served.output else 0
    if counted is not None:
        expect = min(counted, params.max_new_tokens)
        if abs(expect - served.output_tokens) > count_slack(expect):
            return (
                rules.FAIL,
                min(expect, served.output_tokens),
                f"the output is {expect} tokens; the executor signed {served.output_tokens}",
            )
    tol = tolerance
    if not params.do_sample:
        again = await pool.generate(served.model, served.prompt, params, low_priority=True)
        if again.text == served.output:
            return rules.PASS, None, "the same text"
        scored = await _score(pool, served, params, None, tol)
        if scored is None:
            return rules.SKIPPED, None, "a different text, and no local node can score it"
        if scored["first_failure"] is not None:
            pos = scored["first_failure"]
            return rules.FAIL, pos, f"token {pos} is not the model's choice beyond {tol}"
        end = scored["end"]
        if (
            scored["tokens"] < params.max_new_tokens
            and not params.stop  # (a stop sequence may end it: the greedy re-run says)
            and not end["eos_is_top"]
            and end["eos_gap"] is not None  # None: the model has no end-of-text token
            and end["eos_gap"] > tol
        ):
            pos = scored["tokens"]
            return rules.FAIL, pos, f"the text stops at token {pos}; the model goes on"
        return rules.PASS, None, "a different text within the tolerance (near-ties)"
    top_k = params.top_k or SAMPLING_TOP_K
    scored = await _score(pool, served, params, top_k, tol)
    if scored is None:
        return rules.PASS, None, "sampled: hash and counts match (no local node can score)"
    if scored["first_outside_top_k"] is not None:
        pos = scored["first_outside_top_k"]
        return rules.FAIL, pos, f"token {pos} is outside the top {top_k}"
    return rules.PASS, None, f"sampled: hash and counts match, every token in the top {top_k}"


async def _judge_chat(
    served: AuditResultPayload, params: GenerateParams, pool: NodePool
) -> tuple[str, int | None, str]:
    """A chat answered by a node's chat API (tools, a response format), whose message
    matched its signed summary: a greedy one is run again on a local node that takes
    chats, and the same message passes; a different one is skipped (a message with tool
    calls has no tokens to score in one forward pass). A sampled one passes on its hash
    and counts (as a sampled text does where no node can score)."""
    if not pool.takes_chat(served.model):
        return rules.SKIPPED, None, f"no local node takes chats for {served.model}"
    if params.do_sample:
        return rules.PASS, None, "a sampled chat answer: hash and counts match"
    again = await pool.generate(served.model, served.prompt, params, low_priority=True)
    if again.text == served.output:
        return rules.PASS, None, "the same message"
    return rules.SKIPPED, None, "a different message, which cannot be scored"


async def _score(
    pool: NodePool,
    served: AuditResultPayload,
    params: GenerateParams,
    top_k: int | None,
    tolerance: float,
) -> dict[str, Any] | None:
    return await pool.score(
        served.model,
        served.prompt,
        served.output,
        repetition_penalty=params.repetition_penalty,
        top_k=top_k,
        tolerance=tolerance,
    )
