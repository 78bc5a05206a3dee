"""A streamed chat of an OpenAI-compatible node's chat API: each event cut to its delta
(``chat_piece``), the calls' order checked (``next_call_index``), and the message put together
from the pieces (``StreamedMessage``) equal to the same answer whole (``message_text``: what
is stored, hashed and audited)."""

from __future__ import annotations

from typing import Any

import pytest

from supernode.petals.client.openai import (
    StreamedMessage,
    chat_piece,
    message_text,
    next_call_index,
)
from supernode.petals.client.protocol import NodeFailure


def call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


CALLS = [call("call_a", "get_weather", '{"city":"Rome"}'), call("call_b", "get_time", "{}")]


def event(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": choices, **extra}


def streamed(calls: list[dict[str, Any]], content: str | None) -> list[dict[str, Any]]:
    """The events a server sends for that answer: role, content in pieces, each call's id and
    name then its arguments 5 characters at a time (two calls interleaved), finish, usage."""
    out = [event({"role": "assistant", "content": ""})]
    if content:
        out += [event({"content": content[i : i + 4]}) for i in range(0, len(content), 4)]
    for i, c in enumerate(calls):
        head = {"index": i, "id": c["id"], "type": "function"}
        out.append(event({"tool_calls": [{**head, "function": {"name": c["function"]["name"]}}]}))
    longest = max((len(c["function"]["arguments"]) for c in calls), default=0)
    for j in range(0, longest, 5):
        for i, c in enumerate(calls):
            if piece := c["function"]["arguments"][j : j + 5]:
                out.append(event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    out.append(event({}, "tool_calls" if calls else "stop"))
    out.append(event(None, usage={"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}))
    return out


@pytest.mark.parametrize(
    ("calls", "content"),
    [(CALLS, None), (CALLS[:1], "let me look"), ([], '{"answer": "json"}')],
)
def test_the_pieces_make_the_message_the_whole_answer_has(
    calls: list[dict[str, Any]], content: str | None
) -> None:
    message = StreamedMessage()
    sent: list[dict[str, Any]] = []
    begun = 0
    for e in streamed(calls, content):
        if (piece := chat_piece(e)) is not None:
            begun = next_call_index(piece, begun)
            sent.append(message.add(piece))
    assert begun == len(calls)
    whole = {"choices": [{"message": {"content": content, "tool_calls": calls or None}}]}
    assert message.text() == message_text(whole)
    assert message.completion_tokens == 7
    assert {} in sent  # the usage: nothing for the client
    assert not any("role" in d for d in sent)  # the daemon sends its own first chunk
    got = "".join(d.get("content", "") for d in sent)
    assert got == (content or "")


def test_a_message_with_neither_content_nor_calls_is_empty() -> None:
    message = StreamedMessage()
    for e in (event({"role": "assistant", "content": ""}), event({}, "stop")):
        assert chat_piece(e) is None
    assert message.empty
    with pytest.raises(NodeFailure, match="neither content nor tool calls"):
        message.text()


@pytest.mark.parametrize(
    ("delta", "why"),
    [
        ({"content": 5}, "content is not text"),
        ({"tool_calls": {"index": 0}}, "not a list"),
        ({"tool_calls": ["x"]}, "not an object"),
        ({"tool_calls": [{"index": -1}]}, "index is not 0 to 127"),
        ({"tool_calls": [{"index": 128}]}, "index is not 0 to 127"),
        ({"tool_calls": [{"index": True}]}, "index is not 0 to 127"),
        ({"tool_calls": [{"index": "0"}]}, "index is not 0 to 127"),
        ({"tool_calls": [{"index": 0, "id": 7}]}, "id is not text"),
        ({"tool_calls": [{"index": 0, "function": "f"}]}, "function is not an object"),
        ({"tool_calls": [{"index": 0, "function": {"arguments": {}}}]}, "not text"),
    ],
)
def test_a_malformed_delta_is_the_node_s_failure(delta: dict[str, Any], why: str) -> None:
    with pytest.raises(NodeFailure, match=why):
        chat_piece(event(delta))


def test_an_event_without_a_delta_or_a_call_out_of_order_is_the_node_s_failure() -> None:
    with pytest.raises(NodeFailure, match="no choices"):
        chat_piece({"choices": [{"index": 0}]})
    gap = chat_piece(event({"tool_calls": [{"index": 1, "id": "c", "function": {"name": "f"}}]}))
    assert gap is not None
    with pytest.raises(NodeFailure, match="streamed before call 0"):
        next_call_index(gap, 0)


def test_a_piece_is_what_the_client_gets_and_nothing_else() -> None:
    piece = chat_piece(event({"role": "assistant", "content": "hé", "refusal": None}))
    assert piece == {"content": "hé"}
