"""The node pool against real petals-node processes, and a small fake node for bad answers.

Two real nodes (``python -m supernode.petals.server --tiny-random``) share one tiny random model;
they are SIGKILLed, SIGSTOPped and restarted here for real. The fake node (FastAPI in its own
process) answers with empty output, ``"ok": false``, an empty or hanging stream, and the OpenAI
completions API. This process never imports torch: only the node processes do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from supernode.devnet import free_port
from supernode.petals.client.pool import (
    GenerateParams,
    NodeConfig,
    NodePool,
    NodeRejected,
    NodeUnavailable,
)
from supernode.petals.server.tiny_model import is_tiny_model
from tests.conftest import running_pool

pytestmark = pytest.mark.integration

MODEL = "tiny-pool-model"  # the model folder's name is the model's name
NODE_LIMIT = 64  # --max-new-tokens of the real nodes
READY_TIMEOUT_S = 120.0  # a node process: imports, model made or loaded, warm-up
GREEDY = GenerateParams(max_new_tokens=12)

FAKE_NODE = r'''
"""A node that answers badly on purpose: Petals API with empty output / "ok": false, a Petals
stream that is empty or hangs, and an OpenAI completions API that echoes its parameters."""
import asyncio, json, sys
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse

port, model = int(sys.argv[1]), sys.argv[2]
app = FastAPI()
count = {"generate": 0, "stream": 0}


@app.get("/count")
async def get_count():
    return count


@app.get("/health")
async def health():
    return {"status": "ok", "models": [model]}


@app.post("/api/v1/generate")
async def generate(request: Request):
    values = dict(parse_qsl((await request.body()).decode()))
    count["generate"] += 1
    if "ok-false" in values.get("inputs", ""):
        return {"ok": False, "traceback": "fake node: CUDA out of memory"}  # HTTP 200, as Petals
    return {"ok": True, "outputs": "", "input_tokens": 3, "output_tokens": 0}


@app.websocket("/api/v2/generate")
async def generate_v2(ws: WebSocket):
    await ws.accept()
    count["stream"] += 1
    await ws.receive_json()
    await ws.send_json({"ok": True})
    step = await ws.receive_json()
    if "hang" in step.get("inputs", ""):
        await asyncio.sleep(3600)
    await ws.send_json({"ok": True, "outputs": "", "stop": True, "token_count": 0})
    await ws.receive()


@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": model, "object": "model"}]}


@app.post("/v1/completions")
async def completions(request: Request):
    body = await request.json()
    count["generate"] += 1
    pieces = [f"max_tokens={body['max_tokens']}", f" temperature={body['temperature']}"]
    if body.get("stream"):
        async def events():
            for piece in pieces:
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": piece}]}) + "\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": 2}
    return {"choices": [{"index": 0, "text": "".join(pieces)}], "usage": usage}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
'''


@dataclass
class Proc:
    """One node process on a fixed port; restarts reuse the port and the command."""

    cmd: list[str]
    port: int
    log: Path
    started: list[subprocess.Popen[bytes]]  # every process ever started, for the finaliser
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        self.started.append(self.popen)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                pytest.fail(f"{self.url} exited with {self.popen.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.url} not ready after {timeout_s} s: {self.tail()}")

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)

    def restart(self) -> None:
        self.start()
        self.wait_ready()

    def count(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(self.url + "/count", timeout=2.0).json()
        return counts

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def fake_node(root: Path, name: str, started: list[subprocess.Popen[bytes]]) -> Proc:
    """A fake node process (not started yet); the script is written once."""
    script = root / "fake_node.py"
    if not script.exists():
        script.write_text(FAKE_NODE)
    port = free_port()
    return Proc(
        [sys.executable, str(script), str(port), MODEL], port, root / f"{name}.log", started
    )


@dataclass
class Swarm:
    real: list[Proc]
    fake: Proc
    root: Path
    started: list[subprocess.Popen[bytes]]

    def fake_node(self, name: str) -> Proc:
        return fake_node(self.root, name, self.started)


def _end_all(started: list[subprocess.Popen[bytes]]) -> None:
    for popen in started:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
            popen.terminate()
    for popen in started:
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """Two real petals nodes (one tiny model, made by whichever starts first) and a fake node."""
    root = tmp_path_factory.mktemp("petals-pool")
    started: list[subprocess.Popen[bytes]] = []
    real = []
    for i in range(2):
        port = free_port()
        cmd = [sys.executable, "-m", "supernode.petals.server", "--tiny-random", str(root / MODEL)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
        cmd += ["--max-new-tokens", str(NODE_LIMIT), "--log-level", "WARNING"]
        real.append(Proc(cmd, port, root / f"node{i}.log", started))
    swarm = Swarm(real, fake_node(root, "fake", started), root, started)
    try:
        real[0].start()  # makes the model; the others start once it is complete
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_tiny_model(root / MODEL):
            assert real[0].popen is not None and real[0].popen.poll() is None, real[0].tail()
            assert time.monotonic() < deadline, "the tiny model was not made in time"
            time.sleep(0.1)
        for proc in [*real[1:], swarm.fake]:
            proc.start()
        for proc in [*real, swarm.fake]:
            proc.wait_ready()
        yield swarm
    finally:
        _end_all(started)


def node_status(pool: NodePool, url: str) -> dict[str, Any]:
    return next(s for s in pool.status() if s["url"] == url)


async def collect(pool: NodePool, prompt: str, params: GenerateParams = GREEDY) -> list[str]:
    return [chunk async for chunk in pool.stream(MODEL, prompt, params)]


def test_pool_module_imports_no_torch() -> None:
    code = "import sys, supernode.petals.client.pool; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


async def test_both_nodes_serve_20_concurrent_requests(swarm: Swarm) -> None:
    a, b = (p.url for p in swarm.real)
    async with running_pool(a, b) as pool:
        assert pool.models() == {MODEL: [a, b]}
        assert all(s["healthy"] and s["breaker"] == "closed" for s in pool.status())
        prompts = [f"the {word} sat on the" for word in "cat dog man boy girl king".split()] * 4
        results = await asyncio.gather(
            *(pool.generate(MODEL, p, GenerateParams(max_new_tokens=8)) for p in prompts[:20])
        )
        assert all(r.text and r.attempts == 1 and 0 < (r.output_tokens or 0) <= 8 for r in results)
        assert {r.node_url for r in results} == {a, b}
        assert [s["inflight"] for s in pool.status()] == [0, 0]
        assert [s["failures"] for s in pool.status()] == [0, 0]


async def test_greedy_generate_equals_joined_stream(swarm: Swarm) -> None:
    async with running_pool(*(p.url for p in swarm.real)) as pool:
        prompt = "the old man and the sea"
        result = await pool.generate(MODEL, prompt, GREEDY)
        chunks = await collect(pool, prompt)
        assert len(chunks) > 1 and all(chunks)
        assert "".join(chunks) == result.text != ""
        assert result.input_tokens == 6 and result.output_tokens == GREEDY.max_new_tokens


async def test_sigkilled_node_mid_batch_every_request_fails_over(swarm: Swarm) -> None:
    victim, survivor = swarm.real
    killed = False
    try:
        async with running_pool(victim.url, survivor.url) as pool:
            params = GenerateParams(max_new_tokens=32)
            tasks = [
                asyncio.create_task(pool.generate(MODEL, f"story number {i} is about", params))
                for i in range(24)
            ]
            deadline = time.monotonic() + 10
            while node_status(pool, victim.url)["inflight"] < 4:
                assert time.monotonic() < deadline, "the victim never had requests in flight"
                await asyncio.sleep(0.01)
            victim.kill()  # SIGKILL
            killed = True
            results = await asyncio.gather(*tasks)
            assert len(results) == 24 and all(r.text for r in results)
            moved = [r for r in results if r.attempts > 1]
            assert moved and all(r.node_url == survivor.url for r in moved)
            assert node_status(pool, victim.url)["failures"] >= 1
            assert node_status(pool, survivor.url)["failures"] == 0
    finally:
        if killed:
            await asyncio.to_thread(victim.restart)


async def test_hung_node_fails_over_in_time_and_breaker_opens_and_closes(swarm: Swarm) -> None:
    hung, good = swarm.real
    timeout_s, reset_s, failures = 1.5, 2.0, 2
    async with running_pool(
        hung.url,
        good.url,
        request_timeout_s=timeout_s,
        connect_timeout_s=0.5,
        breaker_failures=failures,
        breaker_reset_s=reset_s,
        stream_idle_timeout_s=1.0,
    ) as pool:
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            hits = 0  # requests that waited on the hung node first
            for _ in range(2 * failures + 2):
                started = time.monotonic()
                result = await pool.generate(MODEL, "a quiet night", GREEDY)
                elapsed = time.monotonic() - started
                assert result.node_url == good.url and result.text
                assert elapsed < timeout_s + 1.0, f"fail-over took {elapsed:.2f} s"
                if result.attempts == 2:
                    hits += 1
                    assert elapsed >= timeout_s - 0.1
                assert node_status(pool, hung.url)["failures"] == hits
                if hits == failures:
                    break
            assert hits == failures
            status = node_status(pool, hung.url)
            assert status["breaker"] == "open" and "1.5 s" in status["last_error"]

            # Open: the hung node is not even tried, by generate or by stream.
            started = time.monotonic()
            result = await pool.generate(MODEL, "a quiet night", GREEDY)
            assert result.attempts == 1 and time.monotonic() - started < 1.0
            assert "".join(await collect(pool, "a quiet night")) == result.text
        finally:
            os.kill(hung.pid, signal.SIGCONT)

        await asyncio.sleep(reset_s - (time.monotonic() - started) + 0.1)
        assert node_status(pool, hung.url)["breaker"] == "half-open"
        served = set()
        for _ in range(4):
            served.add((await pool.generate(MODEL, "a quiet night", GREEDY)).node_url)
            if hung.url in served:
                break
        assert hung.url in served
        status = node_status(pool, hung.url)
        assert status["breaker"] == "closed" and status["failures"] == 0


async def test_stream_on_hung_node_fails_over_within_connect_timeout(swarm: Swarm) -> None:
    hung, good = swarm.real
    async with running_pool(hung.url, good.url, connect_timeout_s=0.5) as pool:
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            chunks = await collect(pool, "the sun is up")
            elapsed = time.monotonic() - started
            assert chunks and elapsed < 0.5 + 1.0
            assert node_status(pool, hung.url)["failures"] == 1

            started = time.monotonic()
            await pool.check_health()  # health_timeout_s=1.0 bounds the check
            assert time.monotonic() - started < 1.0 + 0.5
            status = node_status(pool, hung.url)
            assert not status["healthy"] and "no health answer within 1 s" in status["last_error"]
            assert pool.models() == {MODEL: [good.url]}
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        await pool.check_health()
        assert pool.models() == {MODEL: [hung.url, good.url]}


async def test_all_nodes_down_gives_503_quickly(swarm: Swarm) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    async with running_pool(*dead) as pool:
        assert pool.models() == {}
        with pytest.raises(NodeUnavailable) as caught:
            await pool.generate(MODEL, "hello", GREEDY)
        with pytest.raises(NodeUnavailable):
            await collect(pool, "hello")
    assert time.monotonic() - started < 3.0
    error = caught.value
    assert error.status == 503 and error.reason == "no_node"
    assert all(f"{url}: unhealthy (cannot connect" in error.detail for url in dead)

    # Health still says "up" but the only node was SIGKILLed: every try fails, fast.
    doomed = swarm.fake_node("doomed")
    await asyncio.to_thread(doomed.restart)
    async with running_pool(doomed.url) as pool:
        assert pool.models() == {MODEL: [doomed.url]}
        doomed.kill()
        started = time.monotonic()
        with pytest.raises(NodeUnavailable) as caught:
            await pool.generate(MODEL, "hello", GREEDY)
        assert time.monotonic() - started < 3.0
        assert caught.value.reason == "all_tries_failed"
        assert (
            "3 tries" in caught.value.detail
            and f"{doomed.url}: cannot connect" in caught.value.detail
        )
        assert node_status(pool, doomed.url)["breaker"] == "open"  # 3 failures


async def test_empty_output_and_ok_false_are_failures_that_fail_over(swarm: Swarm) -> None:
    fake, real = swarm.fake, swarm.real[0]
    for prompt, error in [("the cat", "empty output"), ("ok-false the cat", "out of memory")]:
        before = fake.count()["generate"]
        async with running_pool(fake.url, real.url) as pool:  # the fake is tried first
            result = await pool.generate(MODEL, prompt, GREEDY)
            assert result.node_url == real.url and result.attempts == 2 and result.text
            status = node_status(pool, fake.url)
            assert status["failures"] == 1 and error in status["last_error"]
        assert fake.count()["generate"] == before + 1


async def test_empty_or_silent_stream_is_a_failure_that_fails_over(swarm: Swarm) -> None:
    fake, real = swarm.fake, swarm.real[0]
    for prompt, error, idle_s in [("the cat", "empty stream", 5.0), ("hang on", "within 1 s", 1.0)]:
        before = fake.count()["stream"]
        async with running_pool(fake.url, real.url, stream_idle_timeout_s=idle_s) as pool:
            started = time.monotonic()
            chunks = await collect(pool, prompt)
            assert chunks and time.monotonic() - started < idle_s + 1.0
            assert "".join(chunks) == (await pool.generate(MODEL, prompt, GREEDY)).text
            status = node_status(pool, fake.url)
            assert status["failures"] == 1 and error in status["last_error"]
        assert fake.count()["stream"] == before + 1


async def test_bad_params_are_refused_without_fail_over(swarm: Swarm) -> None:
    fake, real = swarm.fake, swarm.real[0]
    too_many = GenerateParams(max_new_tokens=NODE_LIMIT + 1)
    before = fake.count()
    async with running_pool(real.url, fake.url) as pool:  # the real node is tried first
        with pytest.raises(NodeRejected) as caught:
            await pool.generate(MODEL, "the cat", too_many)
        assert caught.value.status == 400 and caught.value.reason == "out_of_range"
        assert f"from 1 to {NODE_LIMIT}" in caught.value.detail
        assert caught.value.node_url == real.url
        assert [s["failures"] for s in pool.status()] == [0, 0]
    async with running_pool(real.url, fake.url) as pool:
        with pytest.raises(NodeRejected):
            await collect(pool, "the cat", too_many)
        assert [s["failures"] for s in pool.status()] == [0, 0]
    assert fake.count() == before  # no request moved on to the other node


async def test_openai_node(swarm: Swarm) -> None:
    node = NodeConfig(swarm.fake.url, kind="openai")
    async with running_pool(node) as pool:
        assert pool.models() == {MODEL: [swarm.fake.url]}
        result = await pool.generate(MODEL, "one two three", GenerateParams(max_new_tokens=5))
        assert result.text == "max_tokens=5 temperature=0.0"  # greedy: temperature 0
        assert (result.input_tokens, result.output_tokens) == (3, 2)
        sampled = GenerateParams(max_new_tokens=7, do_sample=True, temperature=0.5)
        chunks = await collect(pool, "one two three", sampled)
        assert chunks == ["max_tokens=7", " temperature=0.5"]
