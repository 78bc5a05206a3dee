"""OpenAI request bodies: every field honoured or refused with OpenAI's 400 naming it; stop
sequences cut a whole text and a stream alike."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from supernode.inference.openai_chat import PASSED_FIELDS
from supernode.inference.openai_fields import OpenAIError
from supernode.inference.openai_params import CHAT_FIELDS, COMPLETION_FIELDS, parse_request
from supernode.petals.client.stops import StopCutter, cut

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMP = {"model": "m", "prompt": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def refused(body: dict[str, Any], chat: bool, param: str, code: str | None = None) -> OpenAIError:
    with pytest.raises(OpenAIError) as err:
        parse_request(body, chat)
    e = err.value
    assert e.status == 400 and e.type == "invalid_request_error", e.body()
    assert e.param == param, e.body()
    if code is not None:
        assert e.code == code, e.body()
    return e


def test_plain_requests_read_as_asked() -> None:
    r = parse_request({**CHAT, "max_completion_tokens": 7, "max_tokens": 3, "seed": 5}, True)
    assert r.chat and r.prompt == "user: hi\nassistant:" and r.max_tokens == 7 and r.seed == 5
    assert r.native_params(7) == {"max_new_tokens": 7, "seed": 5}
    r = parse_request({**COMP, "max_tokens": 4, "stop": "\n", "echo": True}, False)
    assert r.prompt == "hi" and r.stop == ("\n",) and r.echo and r.prompt_param == "prompt"
    assert r.native_params(4) == {"max_new_tokens": 4, "stop": ["\n"]}
    # a one-element prompt list is a prompt; names and text parts render
    assert parse_request({"model": "m", "prompt": ["x"]}, False).prompt == "x"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "name": "ann", "content": parts},
    ]
    assert parse_request({"model": "m", "messages": msgs}, True).prompt == (
        "system: be brief\nuser (ann): ab\nassistant:"
    )


def test_sampling_knobs_map_to_the_native_params() -> None:
    def native(**kw: Any) -> dict[str, Any]:
        return parse_request({**CHAT, **kw}, True).native_params(8)

    assert native(temperature=0) == {"max_new_tokens": 8}  # greedy
    assert native(top_p=0, temperature=1.5) == {"max_new_tokens": 8}  # greedy too
    assert native(temperature=0.7) == {"max_new_tokens": 8, "do_sample": True, "temperature": 700}
    assert native(temperature=2, top_p=0.5) == {
        "max_new_tokens": 8,
        "do_sample": True,
        "temperature": 2000,
        "top_p": 500,
    }
    assert native(top_p=1) == {"max_new_tokens": 8, "do_sample": True}


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"temperature": 5}, "temperature", "invalid_value"),
        ({"temperature": -0.1}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": True}, "max_tokens", "invalid_type"),
        ({"max_tokens": 2**70}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens", "invalid_type"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"stop": 3}, "stop", "invalid_type"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", None),
        ({"stream": True, "stream_options": {"other": 1}}, "stream_options", None),
        ({"logprobs": "yes"}, "logprobs", "invalid_type"),
        ({"top_logprobs": 3}, "top_logprobs", None),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
        ({"frequency_penalty": 3}, "frequency_penalty", "invalid_value"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        (
            {"tools": [{"type": "function", "function": {"name": "f g"}}]},
            "tools[0].function.name",
            None,
        ),
        ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type", None),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]},
            "tools[0].function.x",
            "unknown_parameter",
        ),
        ({"tools": {"type": "function"}}, "tools", "invalid_type"),
        ({"tool_choice": "auto"}, "tool_choice", None),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
            None,
        ),
        ({"tools": [TOOL], "logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"response_format": {"type": "xml"}}, "response_format.type", None),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "invalid_type",
        ),
        (
            {"response_format": {"type": "json_object"}, "stream": True, "logprobs": True},
            "logprobs",
            "unsupported_parameter",
        ),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", None),
        ({"user": "u" * 300}, "user", "invalid_value"),
        ({"wizardry": 1}, "wizardry", "unknown_parameter"),
        ({"model": ""}, "model", None),
        ({"messages": []}, "messages", None),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", None),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", None),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls",
            "unknown_parameter",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": {}},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            None,
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content", None),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "user", "content": "x", "x": 1}]}, "messages[0].x", None),
    ],
)
def test_chat_fields_refused_with_the_parameter_named(
    extra: dict[str, Any], param: str, code: str | None
) -> None:
    refused({**CHAT, **extra}, True, param, code)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"messages": []}, "messages"),  # a chat field on the completions API
    ],
)
def test_completion_fields_refused_with_the_parameter_named(
    extra: dict[str, Any], param: str
) -> None:
    refused({**COMP, **extra}, False, param)


def test_a_chat_for_the_node_s_chat_api_keeps_its_fields() -> None:
    """Tools, a response format, tool calls and results: the chat goes to the node as it
    came (its text form is what is priced and stored), and its params say so."""
    body = {
        **CHAT,
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "temperature": 0.5,
    }
    r = parse_request(body, True)
    assert r.passthrough is not None
    assert set(r.passthrough) == set(PASSED_FIELDS)
    assert r.passthrough["messages"] == body["messages"]
    assert json.loads(r.prompt) == r.passthrough
    assert r.native_params(16)["chat"] is True
    # a float in a tool's schema is kept (the text form is not a signed payload's)
    schema = {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5}}}
    with_float = {**TOOL, "function": {"name": "f", "parameters": schema}}
    assert "0.5" in parse_request({**CHAT, "tools": [with_float]}, True).prompt
    # no tools and a text format: a plain chat, rendered as a prompt
    assert parse_request({**CHAT, "tools": [], "tool_choice": "none"}, True).passthrough is None
    # streamed too, with its usage
    opts = {"stream": True, "stream_options": {"include_usage": True}}
    streamed = parse_request({**body, **opts}, True)
    assert streamed.stream and streamed.include_usage and streamed.passthrough == r.passthrough


def test_an_answer_s_message_sent_back_as_the_sdk_sends_it_is_accepted() -> None:
    """The SDK sends an answer's message object back with its empty fields (refusal: null,
    tool_calls: null, annotations: []): they ask for nothing, on either path."""
    back = {
        "role": "assistant",
        "content": "hello",
        "refusal": None,
        "tool_calls": None,
        "function_call": None,
        "audio": None,
        "annotations": [],
    }
    turns = [{"role": "user", "content": "hi"}, back, {"role": "user", "content": "more"}]
    plain = parse_request({**CHAT, "messages": turns}, True)
    assert plain.passthrough is None and "assistant: hello" in plain.prompt
    tools = parse_request({**CHAT, "messages": turns, "tools": [TOOL]}, True)
    assert tools.passthrough is not None
    assert tools.passthrough["messages"][1] == {"role": "assistant", "content": "hello"}


def test_values_that_ask_for_nothing_are_accepted() -> None:
    quiet = {
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "tools": [],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "store": False,
        "service_tier": "auto",
        "modalities": ["text"],
        "user": "u-1",
        "n": 1,
    }
    r = parse_request({**CHAT, **quiet}, True)
    assert r.user == "u-1" and r.logprobs is None
    assert parse_request({**CHAT, "logprobs": True, "top_logprobs": 2}, True).logprobs == 2
    assert parse_request({**COMP, "logprobs": 0}, False).logprobs == 0
    # every documented field has a reader: none is ignored by accident
    assert {"stop", "seed", "user", "stream_options"} <= CHAT_FIELDS & COMPLETION_FIELDS


def test_not_an_object() -> None:
    for body in ([], "x", None, 3):
        refused(body, True, "body")  # type: ignore[arg-type]


def test_stop_cut_and_stream_agree() -> None:
    stops = ("END", "\n\n", "x")
    rng = random.Random(7)
    alphabet = "abcENDx\n "
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        whole, found = cut(text, stops)
        c = StopCutter(stops)
        out, i = "", 0
        while i < len(text):  # random chunk sizes
            n = rng.randint(1, 5)
            out += c.feed(text[i : i + n])
            i += n
            if c.stopped:
                break
        out += c.flush()
        assert out == whole and c.stopped == found, (text, out, whole)
        assert not any(s in out for s in stops)
    assert cut("abc", ()) == ("abc", False)
    assert cut("aENDb\n\nc", stops) == ("a", True)
