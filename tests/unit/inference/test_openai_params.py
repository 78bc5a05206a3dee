"""OpenAI request bodies: every field honoured or refused with OpenAI's 400 naming it; stop
sequences cut a whole text and a stream alike."""

from __future__ import annotations

import random
from typing import Any

import pytest

from supernode.inference.openai_params import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    OpenAIError,
    parse_request,
)
from supernode.petals.client.stops import StopCutter, cut

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMP = {"model": "m", "prompt": "hi"}


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
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", None),
        ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", None),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", None),
        ({"user": "u" * 300}, "user", "invalid_value"),
        ({"wizardry": 1}, "wizardry", "unknown_parameter"),
        ({"model": ""}, "model", None),
        ({"messages": []}, "messages", None),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", None),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", None),
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
