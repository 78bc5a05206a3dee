"""The node clients against small in-process servers: the class each kind gets, server-sent
events cut at awkward places, streams that end early, go silent or never open."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from supernode.petals.client.base import NodeClient, NodeConfig, Timeouts
from supernode.petals.client.openai import OpenAINodeClient
from supernode.petals.client.petals import PetalsNodeClient
from supernode.petals.client.pool import node_client
from supernode.petals.client.protocol import GenerateParams, NodeFailure

TIMEOUTS = Timeouts(request_s=5.0, connect_s=0.3, stream_idle_s=0.3, health_s=1.0)
PARAMS = GenerateParams(max_new_tokens=4)
Handler = Callable[[web.Request], object]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A listening socket that never accepts: connections open (the kernel's backlog), and
    nothing ever answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


@asynccontextmanager
async def serving(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """An aiohttp server on a free port with ``routes`` (path -> handler, GET and POST)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def opened(url: str, kind: str) -> AsyncIterator[NodeClient]:
    client = node_client(NodeConfig(url, kind=kind), TIMEOUTS)
    client.open()
    try:
        yield client
    finally:
        await client.close()


async def chunks(client: NodeClient) -> list[str]:
    return [c async for c in client.stream("m", "prompt", PARAMS)]


def sse(pieces: list[bytes]) -> Handler:
    """A completions stream written in exactly these pieces, a pause between them."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(0.01)
        return resp

    return handler


def event(text: str) -> bytes:
    data = json.dumps({"choices": [{"text": text}]}, ensure_ascii=False)
    return f"data: {data}\r\n\r\n".encode()


def test_each_kind_gets_its_class_and_an_unknown_kind_is_refused() -> None:
    url = "http://127.0.0.1:1"
    assert type(node_client(NodeConfig(url), TIMEOUTS)) is PetalsNodeClient
    assert type(node_client(NodeConfig(url, kind="openai"), TIMEOUTS)) is OpenAINodeClient
    with pytest.raises(ValueError, match=r"kind must be one of \('petals', 'openai'\)"):
        node_client(NodeConfig(url, kind="grpc"), TIMEOUTS)


async def test_openai_events_cut_anywhere_give_the_same_chunks() -> None:
    body = event("héllo") + b": a comment\r\n" + event(" wörld") + b"data: [DONE]\r\n\r\n"
    # mid "data:", mid "é", mid "\r\n", mid "[DONE]"...
    cuts = sorted({1, 7, body.index("é".encode()) + 1, 40, len(body) - 14, len(body) - 3})
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    async with serving({"/v1/completions": sse(pieces)}) as url, opened(url, "openai") as client:
        assert await chunks(client) == ["héllo", " wörld"]


async def test_openai_stream_that_ends_or_goes_silent_is_a_failure() -> None:
    done = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(event("one"))
        await done.wait()
        return resp

    async with serving({"/v1/completions": sse([event("one")])}) as url:
        async with opened(url, "openai") as client:
            with pytest.raises(NodeFailure, match=r"ended without \[DONE\]"):
                await chunks(client)
    async with serving({"/v1/completions": silent}) as url, opened(url, "openai") as client:
        started = time.monotonic()
        with pytest.raises(NodeFailure, match="no stream message within 0.3 s"):
            await chunks(client)
        assert time.monotonic() - started < 0.3 + 0.5
        done.set()


async def test_a_chat_stream_goes_to_the_chat_api_and_a_call_out_of_order_fails_it() -> None:
    asked: list[dict[str, object]] = []

    def delta(d: dict[str, object]) -> bytes:
        return f"data: {json.dumps({'choices': [{'index': 0, 'delta': d}]})}\n\n".encode()

    def chat(events: list[bytes]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            asked.append(await request.json())
            return await sse([*events, b"data: [DONE]\n\n"])(request)

        return handler

    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}
    good = [delta({"role": "assistant"}), delta({"tool_calls": [call]}), delta({"content": "x"})]
    params = GenerateParams(max_new_tokens=4, chat=True)
    chat_text = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    async with serving({"/v1/chat/completions": chat(good)}) as url, opened(url, "openai") as c:
        got = [p async for p in c.stream("m", chat_text, params)]
    assert got == [{"tool_calls": [call]}, {"content": "x"}]
    assert asked[0]["stream"] is True and asked[0]["stream_options"] == {"include_usage": True}
    assert asked[0]["messages"] == [{"role": "user", "content": "hi"}]
    gap = [delta({"tool_calls": [{**call, "index": 1}]})]
    async with serving({"/v1/chat/completions": chat(gap)}) as url, opened(url, "openai") as c:
        with pytest.raises(NodeFailure, match="tool call 1 streamed before call 0"):
            [p async for p in c.stream("m", chat_text, params)]


@pytest.mark.parametrize("count", [-5, True, 1.5, "7", None])
async def test_a_count_that_is_not_one_is_not_taken(count: object) -> None:
    """A node's usage that is not a count (negative, a bool, a float, text) is as if it
    gave none: the daemon counts the tokens itself, and no charge goes below what it used."""

    async def answer(request: web.Request) -> web.Response:
        usage = {"prompt_tokens": count, "completion_tokens": count}
        return web.json_response({"choices": [{"index": 0, "text": "hi"}], "usage": usage})

    async with serving({"/v1/completions": answer}) as url, opened(url, "openai") as client:
        got = await client.generate("m", "prompt", PARAMS)
    assert (got.text, got.input_tokens, got.output_tokens) == ("hi", None, None)


async def test_petals_stream_closed_by_the_node_midway_is_a_failure() -> None:
    async def generate(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_json({"ok": True})
        await ws.receive_json()
        await ws.send_json({"ok": True, "outputs": "one", "stop": False})
        await ws.close(code=1011)
        return ws

    async with serving({"/api/v2/generate": generate}) as url, opened(url, "petals") as client:
        got: list[str] = []
        with pytest.raises(NodeFailure, match=r"the stream closed before its end \(code 1011\)"):
            async for chunk in client.stream("m", "prompt", PARAMS):
                got.append(chunk)
        assert got == ["one"]


async def test_petals_stream_that_never_opens_fails_within_the_connect_timeout(
    silent_server: str,
) -> None:
    async with opened(silent_server, "petals") as client:
        started = time.monotonic()
        with pytest.raises(NodeFailure, match="within 0.3 s"):
            await chunks(client)
        assert time.monotonic() - started < 0.3 + 0.5
