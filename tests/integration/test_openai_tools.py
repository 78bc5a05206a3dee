"""Tools and response formats through the OpenAI path, as the official `openai` SDK sends
them: a chat that needs the node's own chat API goes to an OpenAI-compatible node as it
came, and its tool calls come back; a node without them, or a Petals node, gets a clear 400
that costs nothing.

The nodes are `scripts/fake_upstream.py` processes (an OpenAI-compatible server standing
in for vLLM or llama.cpp with tool calling: deterministic answers), one with tools and one
without, behind real daemons on a real anvil chain."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from supernode.client import SupernodeClient
from supernode.config import Settings
from supernode.credits.orders import reservation_id
from supernode.devnet import LocalFederation
from supernode.inference.menu import Menu
from supernode.inference.openai import decode_api_key
from supernode.inference.openai_chat import chat_text
from supernode.inference.recording import result_hash
from supernode.local_nodes import FakeUpstream
from supernode.petals.client.base import NodeConfig
from supernode.petals.client.pool import GenerateParams
from supernode.reputation import rules
from supernode.reputation.judge import AuditResultPayload, judge
from tests.conftest import TEST_SETTINGS, buy_pack, running_pool, settled_balance

pytestmark = pytest.mark.integration
TOOLS_MODEL, PLAIN_MODEL = "tool-model", "plain-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "number", "minimum": 0.5}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[str, str]]:
    """The nodes: (URL of the one with tools, URL of the one without)."""
    tools = FakeUpstream.start(TOOLS_MODEL)
    try:
        plain = FakeUpstream.start(PLAIN_MODEL, "--no-tools")
        try:
            yield tools.url, plain.url
        finally:
            plain.stop()
    finally:
        tools.stop()


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, fakes: tuple[str, str]
) -> Iterator[LocalFederation]:
    settings = {
        **TEST_SETTINGS,
        "SUPERNODE_PETALS_NODES": ",".join(f"openai:{url}" for url in fakes),
        "SUPERNODE_AUDITS_ENABLED": "false",
    }
    with LocalFederation(
        root=tmp_path_factory.mktemp("tools"), peers=4, petals_nodes=0, settings=settings
    ) as f:
        yield f


@pytest.fixture(scope="module")
def keyed(fed: LocalFederation) -> Iterator[tuple[openai.OpenAI, str]]:
    """An SDK client on daemon 0 with a key of a fresh pack; (client, reservation pack)."""
    owner, pack_id = buy_pack(fed, 100_000)
    with SupernodeClient(fed.daemons[0].url, identity=owner) as c:
        key = c.delegate(pack_id, max_credits=50_000, expires_in_s=3600)
    wait_models(fed, key)
    with openai.OpenAI(
        base_url=f"{fed.daemons[0].url}/v1", api_key=key, max_retries=0, timeout=60
    ) as client:
        yield client, reservation_id(pack_id, decode_api_key(key)["id"])


def wait_models(fed: LocalFederation, key: str) -> None:
    """Until daemon 0's menu lists both models (its first health checks passed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(
            f"{fed.daemons[0].url}/v1/models",
            headers={"authorization": f"Bearer {key}"},
            timeout=5,
        )
        if r.status_code == 200 and {m["id"] for m in r.json()["data"]} >= {
            TOOLS_MODEL,
            PLAIN_MODEL,
        }:
            return
        time.sleep(0.3)
    raise AssertionError("the models never showed on the menu")


def prices(client: openai.OpenAI, model: str) -> tuple[int, int]:
    card: Any = client.models.retrieve(model)
    p = card.model_extra["pricing"]
    return p["credits_per_input_token"], p["credits_per_output_token"]


def test_a_tool_call_comes_back_and_costs_its_usage(
    fed: LocalFederation, keyed: tuple[openai.OpenAI, str]
) -> None:
    client, mine = keyed
    before = settled_balance(fed, mine)
    r = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert args == {"query": "weather in Paris?", "tools_offered": 1}  # the tools went through
    assert choice.message.content is None
    usage = r.usage
    assert usage is not None and usage.completion_tokens == 8
    per_in, per_out = prices(client, TOOLS_MODEL)
    spent = before - settled_balance(fed, mine)
    assert spent == usage.prompt_tokens * per_in + usage.completion_tokens * per_out


def test_the_tool_s_result_goes_back_and_a_named_tool_is_called(
    keyed: tuple[openai.OpenAI, str],
) -> None:
    client, _ = keyed
    r = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert r.choices[0].message.content == "the tool said: sunny, 21 C"
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    # the SDK's own message objects sent back (with their empty fields) carry on the chat
    first = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    call = (first.choices[0].message.tool_calls or [None])[0]
    assert call is not None
    again = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[
            {"role": "user", "content": "weather in Oslo?"},
            first.choices[0].message,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "snow"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert again.choices[0].message.content == "the tool said: snow"
    plain = client.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=2
    )
    follow = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[
            {"role": "user", "content": "hello"},
            plain.choices[0].message,  # type: ignore[list-item]
            {"role": "user", "content": "and then"},
        ],
        max_tokens=2,
    )
    assert follow.choices[0].message.content
    named = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": "what time is it?"}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = named.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["tools_offered"] == 2  # type: ignore[union-attr]


def test_response_formats_reach_the_node(keyed: tuple[openai.OpenAI, str]) -> None:
    client, _ = keyed
    for rf in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
    ):
        r = client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "reply in JSON please"}],
            response_format=rf,  # type: ignore[arg-type]
            max_tokens=3,
        )
        content = r.choices[0].message.content
        assert content is not None and json.loads(content) == {"answer": " reply in JSON"}
    plain = client.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "just text"}], max_tokens=2
    )  # no tools, no format: the chat rendered as a prompt for /v1/completions, as before
    assert plain.choices[0].message.content == " user: just"


def streamed_message(chunks: list[Any]) -> tuple[str, dict[int, dict[str, str]], str | None]:
    """(content, tool calls by index, finish reason) put together from a stream's chunks,
    as a client of the SDK does."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for c in chunk.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                if tc.function is not None:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
            finish = c.finish_reason or finish
    return content, calls, finish


def test_tool_calls_and_formats_stream_and_cost_what_the_whole_answer_costs(
    fed: LocalFederation, keyed: tuple[openai.OpenAI, str]
) -> None:
    client, mine = keyed
    per_in, per_out = prices(client, TOOLS_MODEL)
    ask: dict[str, Any] = {
        "model": TOOLS_MODEL,
        "messages": [{"role": "user", "content": "weather in Rome for the week?"}],
        "tools": [WEATHER, TIME],
    }
    whole = client.chat.completions.create(**ask)
    (want,) = whole.choices[0].message.tool_calls or []
    before = settled_balance(fed, mine)
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    content, calls, finish = streamed_message(chunks)
    assert finish == "tool_calls" and content == ""
    assert calls == {
        0: {"id": want.id, "name": "get_weather", "arguments": want.function.arguments}  # type: ignore[union-attr]
    }
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 3  # the arguments came in pieces, as the node sent them
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,  # type: ignore[union-attr]
        whole.usage.completion_tokens,  # type: ignore[union-attr]
    )
    spent = before - settled_balance(fed, mine)
    assert spent == usage.prompt_tokens * per_in + usage.completion_tokens * per_out
    # a response format streams its content; a tool's result streams the answer to it
    rf = {"type": "json_object"}
    msgs = [{"role": "user", "content": "reply in JSON please"}]
    json_chunks = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=msgs,
        response_format=rf,
        max_tokens=3,
        stream=True,  # type: ignore[arg-type]
    )
    content, calls, finish = streamed_message(list(json_chunks))
    assert json.loads(content) == {"answer": " reply in JSON"} and not calls
    same = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=msgs,  # type: ignore[arg-type]
        response_format=rf,  # type: ignore[arg-type]
        max_tokens=3,
    )
    assert finish == same.choices[0].finish_reason == "length"  # 3 tokens of 3
    answered = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[
            *ask["messages"],
            whole.choices[0].message,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": want.id, "content": "rain"},
        ],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        stream=True,
    )
    assert streamed_message(list(answered))[0] == "the tool said: rain"


def test_what_cannot_be_served_is_a_clear_400_that_costs_nothing(
    fed: LocalFederation, keyed: tuple[openai.OpenAI, str]
) -> None:
    client, mine = keyed
    before = settled_balance(fed, mine)
    ask = {"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER]}
    with pytest.raises(openai.BadRequestError) as with_logprobs:
        client.chat.completions.create(model=TOOLS_MODEL, logprobs=True, **ask)  # type: ignore[call-overload]
    assert with_logprobs.value.code == "unsupported_parameter"
    assert with_logprobs.value.param == "logprobs"  # type: ignore[attr-defined]
    # a node without tools refuses: its 400 comes back as a 400, whole or streamed
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as no_tools:
            client.chat.completions.create(model=PLAIN_MODEL, stream=stream, **ask)  # type: ignore[call-overload]
        assert "not supported" in no_tools.value.message
    with pytest.raises(openai.BadRequestError) as choice:
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "x"}],
            tool_choice="required",
        )
    assert choice.value.param == "tool_choice"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as bad_tool:
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "no spaces allowed"}}],
        )
    assert bad_tool.value.param == "tools[0].function.name"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as orphan:
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "tool", "content": "a result of no call"}],
            tools=[WEATHER],  # type: ignore[list-item]
        )
    assert orphan.value.param == "messages[0].tool_call_id"  # type: ignore[attr-defined]
    assert settled_balance(fed, mine) == before  # none of that cost anything


async def test_an_audit_runs_a_greedy_chat_again_and_does_not_score_a_different_one(
    fakes: tuple[str, str],
) -> None:
    """The auditor's side (reputation.judge) with a real pool on the node with tools: the
    same message passes; a different one whose hash matches its signed summary cannot be
    scored (skipped); one that is not its summary's fails."""
    tools_url, _ = fakes
    chat = chat_text({"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER]})
    params = {"max_new_tokens": 16, "chat": True}
    async with running_pool(NodeConfig(tools_url, kind="openai"), max_tries=1) as pool:
        assert pool.takes_chat(TOOLS_MODEL)
        ran = await pool.generate(TOOLS_MODEL, chat, GenerateParams(max_new_tokens=16, chat=True))
        menu = Menu(Settings(_env_file=None))  # type: ignore[call-arg]

        async def verdict(output: str, summary_hash: str | None = None) -> str:
            digest = result_hash(output)
            served = AuditResultPayload(
                request_id="0x" + "11" * 32,
                model=TOOLS_MODEL,
                prompt=chat,
                params=params,
                output=output,
                result_hash=digest,
                input_tokens=5,
                output_tokens=8,
            )
            summary = {"result_hash": summary_hash or digest, "output_tokens": 8}
            v, _, _ = await judge(served, summary, pool, menu, 0.5)
            return v

        assert json.loads(ran.text)["tool_calls"][0]["function"]["name"] == "get_weather"
        assert await verdict(ran.text) == rules.PASS
        other = ran.text.replace("get_weather", "get_time")
        assert await verdict(other) == rules.SKIPPED
        assert await verdict(other, summary_hash=result_hash(ran.text)) == rules.FAIL
