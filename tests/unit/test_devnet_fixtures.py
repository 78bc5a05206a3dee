"""The test fixtures' own logic, without starting a model: LocalFederation's node layout
(specs, node map, block time), the commands its Petals nodes run, and the cheating proxy
(tests/cheat_node.py) in front of a small in-process Petals node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from supernode.devnet import TINY_MODEL_DIR, LocalFederation, NodeSpec, PetalsNode
from supernode.petals.client.base import NodeConfig, Timeouts
from supernode.petals.client.petals import PetalsNodeClient
from supernode.petals.client.protocol import GenerateParams
from tests import cheat_node
from tests.cheat_node import Cutter, make_app
from tests.conftest import cheating_front

FULL = "the cat sat on the mat"  # what the fake node generates: 6 tokens
CHUNKS = ["the", " cat", " sat", " on", " the", " mat"]

# --- LocalFederation's layout ----------------------------------------------------------


def test_petals_nodes_alone_means_that_many_honest_nodes(tmp_path: Path) -> None:
    fed = LocalFederation(root=tmp_path, petals_nodes=2)
    assert fed.specs() == [NodeSpec(seed=0, front=())] * 2
    assert fed.node_map is None and fed.block_time is None


def test_specs_win_and_a_contradicting_count_is_refused(tmp_path: Path) -> None:
    specs = [NodeSpec(), NodeSpec(seed=1)]
    assert LocalFederation(root=tmp_path, node_specs=specs).specs() == specs
    assert LocalFederation(root=tmp_path, petals_nodes=2, node_specs=specs).specs() == specs
    with pytest.raises(ValueError, match="petals_nodes=3 but 2 node_specs"):
        LocalFederation(root=tmp_path, petals_nodes=3, node_specs=specs).specs()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"node_map": {4: [0]}}, "node_map names daemon 4; there are 4"),
        ({"node_map": {0: [2]}}, r"node_map\[0\] = \[2\]: there are 2 petals nodes"),
        ({"node_map": {0: [-1]}}, "there are 2 petals nodes"),
        ({"block_time": 0}, "block_time must be at least 1 second"),
        ({"node_specs": [NodeSpec(seed=-1)]}, "the seed must be 0 or more"),
    ],
)
def test_a_bad_layout_is_refused_before_anything_starts(
    tmp_path: Path, kwargs: dict[str, Any], error: str
) -> None:
    fed = LocalFederation(
        root=tmp_path / "fed", petals_nodes=2 if "node_specs" not in kwargs else 0
    )
    for name, value in kwargs.items():
        setattr(fed, name, value)
    with pytest.raises(ValueError, match=error):
        fed.start()
    assert fed.anvil is None and not (tmp_path / "fed").exists()  # nothing was started


def test_node_map_gives_each_daemon_its_own_nodes(tmp_path: Path) -> None:
    fed = LocalFederation(root=tmp_path, petals_nodes=3)
    fed.nodes = [PetalsNode(i, tmp_path / TINY_MODEL_DIR, tmp_path / f"{i}.log") for i in range(3)]
    urls = [n.url for n in fed.nodes]
    assert fed.node_urls(0) == urls and fed.node_urls(3) == urls  # no map: every node
    fed.node_map = {0: [0], 1: [2, 1]}
    assert fed.node_urls(0) == [urls[0]]
    assert fed.node_urls(1) == [urls[2], urls[1]]
    assert fed.node_urls(2) == []  # not in the map: no node


def test_every_seed_is_served_under_seed_zeros_name(tmp_path: Path) -> None:
    honest = PetalsNode(0, tmp_path / TINY_MODEL_DIR, tmp_path / "0.log")
    cmd = honest.node_command()
    assert cmd[cmd.index("--tiny-random") + 1] == str(tmp_path / TINY_MODEL_DIR)
    assert cmd[cmd.index("--model-name") + 1] == TINY_MODEL_DIR
    assert cmd[cmd.index("--port") + 1] == str(honest.port) and honest.upstream_url == honest.url

    other_dir = tmp_path / f"{TINY_MODEL_DIR}-seed1"
    other = PetalsNode(
        1, other_dir, tmp_path / "1.log", seed=1, model_name=TINY_MODEL_DIR, front=cheating_front(8)
    )
    cmd = other.node_command()
    assert cmd[cmd.index("--tiny-random") + 1] == str(other_dir)
    assert cmd[cmd.index("--tiny-seed") + 1] == "1"
    assert cmd[cmd.index("--model-name") + 1] == TINY_MODEL_DIR == other.model
    # behind the proxy: the node listens on the upstream port, the URL is the proxy's
    assert cmd[cmd.index("--port") + 1] == str(other.upstream_port) != str(other.port)
    assert other.url.endswith(f":{other.port}") and other.upstream_url != other.url


# --- the cheating proxy ----------------------------------------------------------------


def test_cutter_keeps_at_most_the_limit_per_step_and_never_touches_counts() -> None:
    cutter = Cutter(8)
    sent = [
        cutter.cut({"ok": True, "outputs": c, "stop": False, "token_count": i + 1})
        for i, c in enumerate(CHUNKS[:-1])
    ]
    last = cutter.cut({"ok": True, "outputs": CHUNKS[-1], "stop": True, "output_tokens": 6})
    assert "".join(m["outputs"] for m in [*sent, last]) == FULL[:8]
    assert [m["token_count"] for m in sent] == [1, 2, 3, 4, 5] and last["output_tokens"] == 6
    again = cutter.cut({"ok": True, "outputs": FULL, "stop": True})  # the next step
    assert again["outputs"] == FULL[:8]
    refusal = {"ok": False, "traceback": "bad", "outputs": FULL}
    assert cutter.cut(refusal) == refusal


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def fake_node(delay_s: float = 0.0) -> web.Application:
    """A Petals node that always generates FULL (6 tokens), in CHUNKS on the WebSocket."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": ["tiny-llama"], "max_length": 256})

    async def generate(request: web.Request) -> web.Response:
        form = await request.post()
        await asyncio.sleep(delay_s)
        if form.get("model") != "tiny-llama":
            return web.json_response({"ok": False, "traceback": "unknown model"}, status=404)
        answer = {"ok": True, "outputs": FULL, "input_tokens": 3, "output_tokens": 6}
        return web.json_response(answer)

    async def tokenize(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"ok": True, "token_count": len(str(form["inputs"]).split())})

    async def session(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert json.loads(await ws.receive_str())["type"] == "open_inference_session"
        await ws.send_json({"ok": True})
        async for msg in ws:
            assert json.loads(msg.data)["type"] == "generate"
            for i, chunk in enumerate(CHUNKS):
                last = i == len(CHUNKS) - 1
                event = {"ok": True, "outputs": chunk, "stop": last, "token_count": i + 1}
                await ws.send_json({**event, "output_tokens": 6} if last else event)
        return ws

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/api/v1/generate", generate)
    app.router.add_post("/api/v1/tokenize", tokenize)
    app.router.add_get("/api/v2/generate", session)
    return app


@asynccontextmanager
async def proxied(limit: int, delay_s: float = 0.0) -> AsyncIterator[tuple[str, str]]:
    async with serving(fake_node(delay_s)) as upstream, serving(make_app(upstream, limit)) as url:
        yield upstream, url


async def test_v1_text_is_cut_and_everything_else_passes_unchanged() -> None:
    async with proxied(8) as (upstream, url), aiohttp.ClientSession() as s:
        form = {"model": "tiny-llama", "inputs": "a b c", "max_new_tokens": "6"}
        async with s.post(f"{url}/api/v1/generate", data=form) as r:
            assert r.status == 200
            assert await r.json() == {
                "ok": True,
                "outputs": FULL[:8],
                "input_tokens": 3,
                "output_tokens": 6,  # billed in full
            }
        async with s.post(f"{url}/api/v1/generate", data={**form, "model": "x"}) as r:
            assert r.status == 404 and (await r.json())["ok"] is False  # refusals pass
        for path in ("/health", "/api/v1/score"):  # a route the node lacks: its 404
            async with s.get(f"{url}{path}") as r, s.get(f"{upstream}{path}") as direct:
                assert (r.status, await r.read()) == (direct.status, await direct.read())
        async with s.post(f"{url}/api/v1/tokenize", data=form) as r:
            assert await r.json() == {"ok": True, "token_count": 3}


async def test_the_daemons_client_gets_cut_text_on_both_apis() -> None:
    timeouts = Timeouts(request_s=5.0, connect_s=2.0, stream_idle_s=2.0, health_s=2.0)
    params = GenerateParams(max_new_tokens=6)
    async with proxied(8) as (_, url):
        client = PetalsNodeClient(NodeConfig(url), timeouts)
        client.open()
        try:
            answer = await client.generate("tiny-llama", "a b c", params)
            assert (answer.text, answer.output_tokens) == (FULL[:8], 6)
            chunks = [c async for c in client.stream("tiny-llama", "a b c", params)]
            assert "".join(chunks) == FULL[:8]  # (the client skips the emptied chunks)
        finally:
            await client.close()


async def test_a_session_step_is_cut_and_its_counts_kept() -> None:
    async with proxied(5) as (_, url), aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{url}/api/v2/generate") as ws:
            await ws.send_json({"type": "open_inference_session", "model": "tiny-llama"})
            assert await ws.receive_json(timeout=5) == {"ok": True}
            for _step in range(2):  # each step gets the limit afresh
                await ws.send_json({"type": "generate", "inputs": "a", "max_new_tokens": 6})
                events = [await ws.receive_json(timeout=5) for _ in CHUNKS]
                assert "".join(e["outputs"] for e in events) == FULL[:5]
                assert [e["token_count"] for e in events] == [1, 2, 3, 4, 5, 6]
                assert events[-1]["stop"] is True and events[-1]["output_tokens"] == 6


async def test_an_upstream_that_is_down_or_too_slow_gives_502(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cheat_node, "REQUEST_TIMEOUT_S", 0.3)
    form = {"model": "tiny-llama", "inputs": "a"}
    async with proxied(8, delay_s=3.0) as (_, url), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/api/v1/generate", data=form) as r:  # the timeout fires
            assert r.status == 502 and "TimeoutError" in (await r.json())["traceback"]
    async with serving(make_app("http://127.0.0.1:1", 8)) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/health") as r:
            assert r.status == 502
        async with s.ws_connect(f"{url}/api/v2/generate") as ws:
            assert (await ws.receive_json(timeout=5))["ok"] is False
