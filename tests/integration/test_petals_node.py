"""A real petals-node process serving a tiny random Llama: the chat.petals.dev HTTP and
WebSocket API, tokenizing, greedy determinism, refusals with reasons, streaming, sessions,
concurrency, timeouts and a client that hangs up mid-stream; and processes racing to make the
same tiny model.

This process never imports torch or transformers; only the node (and the model makers) do."""

from __future__ import annotations

import asyncio
import json
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
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from supernode.devnet import free_port
from supernode.petals.server.tiny_model import MARKER, is_tiny_model
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0  # import torch + make the model + load it: ~5 s here
STOP_TIMEOUT_S = 10.0
WS_TIMEOUT_S = 20.0  # any one WebSocket message
PROMPT = "the quick brown fox and the old man"


@dataclass
class PetalsNode:
    url: str
    ws_url: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start(root: Path, *extra: str) -> PetalsNode:
    port = free_port()
    log = root / "petals-node.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "supernode.petals.server", "--tiny-random", str(root / "tiny")]
    args += ["--host", "127.0.0.1", "--port", str(port), *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    node = PetalsNode(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"petals node exited with {proc.returncode}:\n{tail}")
        try:
            return httpx.get(f"{node.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=READY_TIMEOUT_S, interval_s=0.2, what="petals node /health")
    except BaseException:
        _stop(proc)
        raise
    return node


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PetalsNode]:
    n = _start(tmp_path_factory.mktemp("petals"))
    try:
        yield n
    finally:
        _stop(n.proc)
    # uvicorn re-raises SIGTERM once it has shut down; SIGKILL would mean it hung
    assert n.proc.returncode in (0, -signal.SIGTERM), "the node did not stop on SIGTERM"
    assert "Traceback" not in n.log.read_text(errors="replace"), "the node logged an error"


@pytest.fixture(scope="module")
def hasty_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PetalsNode]:
    """A node whose generation deadline has always passed and that waits 0.5 s for a client."""
    n = _start(tmp_path_factory.mktemp("hasty"), "--timeout", "0.001", "--step-timeout", "0.5")
    try:
        yield n
    finally:
        _stop(n.proc)


def generate(node: PetalsNode, **fields: Any) -> httpx.Response:
    data = {"model": "tiny", "inputs": PROMPT, "max_new_tokens": "16", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    return httpx.post(f"{node.url}/api/v1/generate", data=data, timeout=30)


def tokenize(node: PetalsNode, **fields: Any) -> httpx.Response:
    data = {"model": "tiny", "inputs": PROMPT, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    return httpx.post(f"{node.url}/api/v1/tokenize", data=data, timeout=30)


def assert_refused(r: httpx.Response, status: int, reason: str | None, says: str) -> dict[str, Any]:
    """A refusal: ``status``, ``{"ok": false, "reason", "traceback"}`` naming ``says``."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["ok"] is False
    assert body["reason"] == reason
    assert says in body["traceback"]
    return body


async def ws_recv(ws: ClientConnection) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), WS_TIMEOUT_S))
    assert isinstance(message, dict)
    return message


async def ws_step(ws: ClientConnection, **step: Any) -> list[dict[str, Any]]:
    """Send one generate step; the messages up to the one that says stop (or an error)."""
    await ws.send(json.dumps({"type": "generate", **step}))
    messages = [await ws_recv(ws)]
    while messages[-1]["ok"] and not messages[-1]["stop"]:
        messages.append(await ws_recv(ws))
    return messages


async def open_session(node: PetalsNode, max_length: int = 256) -> ClientConnection:
    ws = await connect(f"{node.ws_url}/api/v2/generate")
    await ws.send(
        json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": max_length})
    )
    assert await ws_recv(ws) == {"ok": True}
    return ws


# --- HTTP API ------------------------------------------------------------------------


def test_health_lists_the_model(node: PetalsNode) -> None:
    health = httpx.get(f"{node.url}/health").json()
    assert health["status"] == "ok"
    assert health["models"] == ["tiny"]  # the folder's name
    assert health["engine"] == "transformers"
    assert health["busy"] == 0
    assert 16 <= health["max_new_tokens"] < health["max_length"] == 256


def test_v1_generates_text_with_token_counts(node: PetalsNode) -> None:
    r = generate(node)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert isinstance(body["outputs"], str) and body["outputs"].strip()
    assert body["input_tokens"] == len(PROMPT.split())  # one word, one token
    assert 1 <= body["output_tokens"] <= 16
    assert body["finish_reason"] in ("length", "eos")
    if body["finish_reason"] == "length":
        assert body["output_tokens"] == 16


def test_v1_greedy_is_deterministic(node: PetalsNode) -> None:
    first = generate(node).json()["outputs"]
    assert generate(node).json()["outputs"] == first
    assert generate(node, do_sample="false").json()["outputs"] == first
    assert generate(node, do_sample="0", temperature="0.3").json()["outputs"] == first
    assert generate(node, inputs="a different prompt").json()["outputs"] != first
    # a JSON body and query arguments work too, as request.values does in chat.petals.dev
    r = httpx.post(f"{node.url}/api/v1/generate", json={"inputs": PROMPT, "max_new_tokens": 16})
    assert r.json()["outputs"] == first
    r = httpx.post(f"{node.url}/api/v1/generate", params={"inputs": PROMPT, "max_new_tokens": 16})
    assert r.json()["outputs"] == first


def test_v1_max_length_counts_the_prompt(node: PetalsNode) -> None:
    n_prompt = len(PROMPT.split())
    body = generate(node, max_new_tokens=None, max_length=str(n_prompt + 5)).json()
    assert body["ok"] is True and 1 <= body["output_tokens"] <= 5
    assert generate(node).json()["outputs"].startswith(body["outputs"])


def test_v1_sampling_follows_its_seed(node: PetalsNode) -> None:
    sample = {"do_sample": "1", "temperature": "1.5", "top_k": "0", "max_new_tokens": "32"}
    a = generate(node, seed="7", **sample).json()["outputs"]
    assert generate(node, seed="7", **sample).json()["outputs"] == a
    others = {generate(node, seed=str(s), **sample).json()["outputs"] for s in range(8, 12)}
    assert others - {a}, "sampling with other seeds never changed the text"


@pytest.mark.parametrize(
    ("fields", "status", "reason", "says"),
    [
        ({"model": "bigscience/bloom"}, 404, "unknown_model", "bigscience/bloom"),
        ({"max_new_tokens": "100000"}, 400, "out_of_range", "max_new_tokens"),
        ({"max_new_tokens": "-1"}, 400, "out_of_range", "max_new_tokens"),
        ({"max_new_tokens": "0"}, 400, "out_of_range", "max_new_tokens"),
        ({"max_new_tokens": "sixteen"}, 400, "bad_number", "max_new_tokens"),
        ({"max_new_tokens": "1.5"}, 400, "bad_number", "max_new_tokens"),
        ({"max_new_tokens": None}, 400, "missing_max_new_tokens", "max_new_tokens"),
        ({"inputs": ""}, 400, "empty_inputs", "inputs"),
        ({"inputs": "   "}, 400, "empty_inputs", "inputs"),
        ({"inputs": None}, 400, "empty_inputs", "inputs"),
        ({"inputs": "the " * 250, "max_new_tokens": "16"}, 400, "too_long", "max_length"),
        ({"max_length": "1000"}, 400, "out_of_range", "max_length"),
        ({"temperature": "nan", "do_sample": "1"}, 400, "out_of_range", "temperature"),
        ({"temperature": "-1"}, 400, "out_of_range", "temperature"),
        ({"top_p": "1.5"}, 400, "out_of_range", "top_p"),
        ({"top_k": "many"}, 400, "bad_number", "top_k"),
        ({"repetition_penalty": "0"}, 400, "out_of_range", "repetition_penalty"),
        ({"do_sample": "maybe"}, 400, "bad_bool", "do_sample"),
        ({"session_id": "abc"}, 400, None, "WebSocket"),
    ],
)
def test_v1_refuses_bad_input_with_a_reason(
    node: PetalsNode, fields: dict[str, Any], status: int, reason: str | None, says: str
) -> None:
    assert_refused(generate(node, **fields), status, reason, says)


def test_v1_refuses_unreadable_bodies(node: PetalsNode) -> None:
    url = f"{node.url}/api/v1/generate"
    r = httpx.post(url, files={"inputs": ("a.txt", b"the")})  # multipart
    assert r.status_code == 415 and r.json()["ok"] is False
    r = httpx.post(url, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["reason"] == "bad_body"
    r = httpx.post(url, content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["reason"] == "bad_body"
    r = httpx.post(url, content=b"x" * 1_100_000)
    assert r.status_code == 413 and r.json()["ok"] is False
    r = httpx.get(url)
    assert r.status_code == 405 and r.json()["ok"] is False


# --- tokenizing ----------------------------------------------------------------------


TOKENIZE_PROMPTS = [
    PROMPT,
    "Hello, World! 42 times (or more): zzyzx quux.",  # punctuation, digits, unknown words
    "  spaces \t and\nnew lines  ",
    "the " * 240,  # longer than a generation may be: still counted
]


def test_tokenize_counts_what_generate_reports_as_input_tokens(node: PetalsNode) -> None:
    before = httpx.get(f"{node.url}/health").json()
    for text in TOKENIZE_PROMPTS:
        r = tokenize(node, inputs=text)
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "token_count": r.json()["token_count"]}
        count = r.json()["token_count"]
        if len(text.split()) < 200:
            assert generate(node, inputs=text, max_new_tokens="1").json()["input_tokens"] == count
        # a JSON body and query arguments are read as generate reads them
        url = f"{node.url}/api/v1/tokenize"
        assert httpx.post(url, json={"inputs": text}).json()["token_count"] == count
        assert httpx.post(url, params={"inputs": text}).json()["token_count"] == count
    assert tokenize(node).json()["token_count"] == len(PROMPT.split())  # one word, one token
    after = httpx.get(f"{node.url}/health").json()
    assert after["tokenized"] - before["tokenized"] == 3 * len(TOKENIZE_PROMPTS) + 1
    # generations are counted apart from tokenizing
    assert after["served"]["v1"] - before["served"]["v1"] == len(TOKENIZE_PROMPTS) - 1
    assert after["served"]["v2"] == before["served"]["v2"]


@pytest.mark.parametrize(
    ("fields", "status", "reason", "says"),
    [
        ({"model": "bigscience/bloom"}, 404, "unknown_model", "bigscience/bloom"),
        ({"inputs": ""}, 400, "empty_inputs", "inputs"),
        ({"inputs": "   "}, 400, "empty_inputs", "inputs"),
        ({"inputs": None}, 400, "empty_inputs", "inputs"),
        ({"inputs": "the " * 25_001}, 413, None, "inputs"),
        ({"inputs": "x" * 1_100_000}, 413, None, "body"),
    ],
)
def test_tokenize_refuses_bad_input_with_a_reason(
    node: PetalsNode, fields: dict[str, Any], status: int, reason: str | None, says: str
) -> None:
    body = assert_refused(tokenize(node, **fields), status, reason, says)
    # generate refuses the same request the same way
    assert generate(node, **fields).json() == body


def test_tokenize_refuses_unreadable_bodies(node: PetalsNode) -> None:
    url = f"{node.url}/api/v1/tokenize"
    r = httpx.post(url, files={"inputs": ("a.txt", b"the")})  # multipart
    assert r.status_code == 415 and r.json()["ok"] is False
    r = httpx.post(url, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["reason"] == "bad_body"
    r = httpx.get(url)
    assert r.status_code == 405 and r.json()["ok"] is False


async def test_tokenize_does_not_wait_behind_generations(node: PetalsNode) -> None:
    prompts = [f"{PROMPT} {w}" for w in ("water", "fire", "snow", "gold", "moon", "rain")]
    counts = {p: len(p.split()) for p in prompts}
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
        generations = [
            asyncio.create_task(
                client.post("/api/v1/generate", data={"inputs": p, "max_new_tokens": 200})
            )
            for p in prompts
        ]

        async def busy() -> int:
            return int((await client.get("/health")).json()["busy"])

        for _ in range(1000):  # until all six are in line
            if await busy() >= len(prompts):
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        replies = await asyncio.gather(
            *(client.post("/api/v1/tokenize", data={"inputs": p}) for p in prompts * 4)
        )
        took = time.monotonic() - started
        still_busy = await busy()
        done = await asyncio.gather(*generations)
        waited = time.monotonic() - started
    assert [r.json()["token_count"] for r in replies] == [counts[p] for p in prompts * 4]
    assert [r.status_code for r in done] == [200] * len(prompts)
    # the tokenizer ran beside the worker, not after the six generations queued before it
    assert still_busy > 0, f"tokenizing took {took:.3f} s, the generations {waited:.3f} s"


# --- WebSocket API -------------------------------------------------------------------


async def test_v2_streams_the_same_text_as_v1(node: PetalsNode) -> None:
    v1 = (await asyncio.to_thread(generate, node)).json()
    ws = await open_session(node)
    try:
        messages = await ws_step(ws, inputs=PROMPT, max_new_tokens=16)
    finally:
        await ws.close()
    assert all(m["ok"] for m in messages)
    assert [m["stop"] for m in messages] == [False] * (len(messages) - 1) + [True]
    assert len(messages) > 1, "the text came in one piece, not streamed"
    assert "".join(m["outputs"] for m in messages) == v1["outputs"]
    assert sum(m["token_count"] for m in messages) == v1["output_tokens"]
    assert messages[-1]["output_tokens"] == v1["output_tokens"]


async def test_v2_session_keeps_its_tokens_and_stops_at_a_stop_sequence(
    node: PetalsNode,
) -> None:
    v1 = (await asyncio.to_thread(generate, node, max_new_tokens="24")).json()["outputs"]
    words = v1.split()
    assert len(words) >= 8
    stop_word = words[3]
    ws = await open_session(node)
    try:
        # as chat.petals.dev's client does: one token a step, until the stop sequence
        first = await ws_step(ws, inputs=PROMPT, max_new_tokens=1, stop_sequence=stop_word)
        text = "".join(m["outputs"] for m in first)
        assert first[-1]["finish_reason"] == "stop_sequence"
        assert text.endswith(stop_word) and v1.startswith(text)
        # the next step continues the same text from where the session is
        more = await ws_step(ws, max_new_tokens=3)
        assert v1.startswith(text + " " + "".join(m["outputs"] for m in more))
        assert more[-1]["input_tokens"] == first[-1]["input_tokens"] + first[-1]["output_tokens"]
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("opening", "step", "says"),
    [
        ({"type": "generate"}, None, "open_inference_session"),
        ({"type": "open_inference_session", "model": "nope", "max_length": 64}, None, "nope"),
        ({"type": "open_inference_session", "max_length": 100000}, None, "max_length"),
        ({"type": "open_inference_session"}, {"type": "generate", "max_new_tokens": 4}, "inputs"),
        ({"type": "open_inference_session"}, {"type": "chat", "inputs": "the"}, "generate"),
        (
            {"type": "open_inference_session", "max_length": 8},
            {"type": "generate", "inputs": "the", "max_new_tokens": 10},
            "max_length",
        ),
        (
            {"type": "open_inference_session"},
            {"type": "generate", "inputs": "the", "max_new_tokens": "x"},
            "max_new_tokens",
        ),
    ],
)
async def test_v2_refuses_bad_messages_and_closes(
    node: PetalsNode, opening: dict[str, Any], step: dict[str, Any] | None, says: str
) -> None:
    async with connect(f"{node.ws_url}/api/v2/generate") as ws:
        await ws.send(json.dumps(opening))
        reply = await ws_recv(ws)
        if step is not None:
            assert reply == {"ok": True}
            await ws.send(json.dumps(step))
            reply = await ws_recv(ws)
        assert reply["ok"] is False
        assert says in reply["traceback"]
        with pytest.raises(ConnectionClosed):
            await ws_recv(ws)


async def test_v2_refuses_a_message_that_is_not_json(node: PetalsNode) -> None:
    async with connect(f"{node.ws_url}/api/v2/generate") as ws:
        await ws.send("open please")
        reply = await ws_recv(ws)
        assert reply["ok"] is False and reply["reason"] == "bad_message"


async def test_a_client_that_hangs_up_mid_stream_leaves_the_node_working(node: PetalsNode) -> None:
    ws = await open_session(node)
    await ws.send(json.dumps({"type": "generate", "inputs": PROMPT, "max_new_tokens": 200}))
    assert (await ws_recv(ws))["ok"] is True
    await ws.close()

    def idle() -> bool:
        return httpx.get(f"{node.url}/health").json()["busy"] == 0

    await asyncio.to_thread(wait_until, idle, 10.0, 0.05, "the node to drop the job")
    assert (await asyncio.to_thread(generate, node)).status_code == 200


# --- load and timeouts -----------------------------------------------------------------


async def test_concurrent_requests_all_succeed(node: PetalsNode) -> None:
    prompts = [f"{PROMPT} {w}" for w in ("water", "fire", "snow", "gold")] * 2
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
        posts = [
            client.post("/api/v1/generate", data={"inputs": p, "max_new_tokens": 16})
            for p in prompts
        ]
        replies = await asyncio.gather(*posts)
        sessions = [open_session(node) for _ in range(2)]
        sockets = await asyncio.gather(*sessions)
        try:
            streams = await asyncio.gather(
                *(ws_step(ws, inputs=prompts[0], max_new_tokens=16) for ws in sockets)
            )
        finally:
            for ws in sockets:
                await ws.close()
    assert [r.status_code for r in replies] == [200] * 8
    texts = [r.json()["outputs"] for r in replies]
    assert texts[:4] == texts[4:], "the same prompt gave different text under load"
    for messages in streams:
        assert "".join(m["outputs"] for m in messages) == texts[0]
    assert time.monotonic() - started < 30


def test_generation_past_its_deadline_is_a_504(hasty_node: PetalsNode) -> None:
    r = generate(hasty_node, max_new_tokens="64")
    assert r.status_code == 504, r.text
    assert r.json()["ok"] is False and r.json()["error"] == "timeout"
    assert httpx.get(f"{hasty_node.url}/health").json()["busy"] == 0


async def test_a_silent_websocket_client_is_closed(hasty_node: PetalsNode) -> None:
    async with connect(f"{hasty_node.ws_url}/api/v2/generate") as ws:
        started = time.monotonic()
        reply = await ws_recv(ws)  # we never open a session
        assert reply["ok"] is False and "no message" in reply["traceback"]
        assert 0.4 < time.monotonic() - started < 10
        with pytest.raises(ConnectionClosed):
            await ws_recv(ws)


# --- making the tiny model -------------------------------------------------------------

_MAKER = """
import os, sys, time
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # the slow part
from supernode.petals.server.tiny_model import make_tiny_model
sync, model = Path(sys.argv[1]), Path(sys.argv[2])
(sync / f"ready-{os.getpid()}").touch()
while not (sync / "go").exists():  # so the three make it at the same moment
    time.sleep(0.001)
path = make_tiny_model(model)
tokenizer = AutoTokenizer.from_pretrained(path)
weights = AutoModelForCausalLM.from_pretrained(path).lm_head.weight
print(len(tokenizer("the quick brown fox")["input_ids"]), float(weights.detach().sum()))
"""


def test_processes_racing_to_make_one_tiny_model_all_get_it(tmp_path: Path) -> None:
    sync, models = tmp_path / "sync", tmp_path / "models"
    sync.mkdir()
    model = models / "tiny"
    model.mkdir(parents=True)  # empty: each maker removes it, then renames its own into place
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    makers = [
        subprocess.Popen(
            [sys.executable, "-c", _MAKER, str(sync), str(model)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    try:

        def ready() -> bool:
            if any(p.poll() is not None for p in makers):
                return True  # one died early: its error is shown below
            return len(list(sync.glob("ready-*"))) == len(makers)

        wait_until(ready, timeout_s=READY_TIMEOUT_S, interval_s=0.01, what="the makers")
        (sync / "go").touch()
        outputs = [p.communicate(timeout=READY_TIMEOUT_S) for p in makers]
    finally:
        for p in makers:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(makers, outputs, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")[-3000:]
    fingerprints = {out.decode().strip() for out, _ in outputs}
    assert len(fingerprints) == 1, fingerprints  # the same model for all three
    assert fingerprints.pop().split()[0] == "4"  # one word, one token
    assert is_tiny_model(model, seed=0) and (model / MARKER).is_file()
    assert [p.name for p in models.iterdir()] == ["tiny"]  # no staging folder left behind


def test_tokenizer_is_shared_and_counts_as_the_node_does(node: PetalsNode) -> None:
    from tokenizers import Tokenizer

    r = httpx.get(f"{node.url}/api/v1/tokenizer", params={"model": "tiny"}, timeout=10)
    assert r.status_code == 200, r.text
    local = Tokenizer.from_str(r.text)
    for text in TOKENIZE_PROMPTS:
        assert len(local.encode(text).ids) == tokenize(node, inputs=text).json()["token_count"]
    r = httpx.get(f"{node.url}/api/v1/tokenizer", params={"model": "other"}, timeout=10)
    assert r.status_code == 404 and r.json()["ok"] is False
