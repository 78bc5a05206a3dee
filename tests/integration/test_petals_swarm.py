"""Requests run on a real private Petals swarm: three `supernode petals-server` processes (one
holds block 0 of the tiny model, two hold block 1), a `petals-node --engine petals` over them,
and three daemons. The same greedy text as the transformers engine on the same weights, on
the native and OpenAI paths, streamed and not; a server SIGKILLed mid-run while another holds
its block; the only holder of a block killed (unhealthy, 503, full refund); and `supernode
devnet` on a swarm leaving no process behind after Ctrl-C.

Run alone with ``pytest -m swarm``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient
from supernode.devnet import PROJECT_ROOT, TINY_MODEL_DIR, LocalFederation
from supernode.local_nodes import PetalsNode, PetalsServer
from tests.conftest import TEST_SETTINGS, buy_pack, pack_state, processes_mentioning, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.swarm]
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_QUORUM_TIMEOUT_S": "3",
    "SUPERNODE_NODE_REQUEST_TIMEOUT_S": "30",
    "SUPERNODE_NODE_STREAM_IDLE_TIMEOUT_S": "30",
    "SUPERNODE_NODE_HEALTH_INTERVAL_S": "1",
    "SUPERNODE_NODE_BREAKER_RESET_S": "2",
    "SUPERNODE_MAX_NEW_TOKENS": "64",
}
SWARM = ("0:1", "1:2", "1:2")  # server 0 alone holds block 0; servers 1 and 2 both hold block 1
PROMPTS = ("the cat sat on the", "one two three four", "what is the time")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("swarm"),
        peers=3,
        petals_nodes=1,
        swarm=SWARM,
        settings=dict(SETTINGS),
    ) as f:
        yield f


@pytest.fixture(scope="module")
def reference(fed: LocalFederation) -> Iterator[PetalsNode]:
    """A transformers-engine node on the swarm's model folder: the same weights, one process."""
    node = PetalsNode(
        9, fed.root / TINY_MODEL_DIR, fed.root / "reference.log", model_name=TINY_MODEL_DIR
    )
    node.start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


@pytest.fixture(autouse=True)
def node_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the module's swarm, the node's ERROR entries written during it
    (with their tracebacks: a stuck worker's stack among them), printed: pytest shows them
    with a failure, where the node's log is otherwise out of reach (CI)."""
    if "fed" not in request.fixturenames:
        yield
        return
    log = request.getfixturevalue("fed").nodes[0].log_path
    start = log.stat().st_size if log.exists() else 0
    yield
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    entry = False
    for line in lines:
        if line[:4].isdigit():  # a new entry begins with its date
            entry = "| ERROR" in line
        if entry:
            print(line[:2000])


def model(fed: LocalFederation) -> str:
    return fed.nodes[0].model


def node_generate(url: str, prompt: str, tokens: int) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/api/v1/generate",
        data={"inputs": prompt, "max_new_tokens": str(tokens)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def health(fed: LocalFederation) -> httpx.Response:
    return httpx.get(f"{fed.nodes[0].url}/health", timeout=10)


def sessions(server: PetalsServer) -> int:
    """Inference sessions a server has opened (petals logs each)."""
    return server.log_path.read_text(errors="replace").count("rpc_inference.open(")


def balance(fed: LocalFederation, i: int, pack_id: str) -> int | None:
    state = pack_state(fed, i, pack_id)
    return state["remaining_credits"] if state else None


def test_health_shows_every_block_and_the_servers_holding_it(fed: LocalFederation) -> None:
    r = health(fed)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["engine"] == "petals"
    swarm = body["swarm"]
    assert swarm["healthy"] is True and swarm["reason"] is None
    assert [b["index"] for b in swarm["blocks"]] == [0, 1]
    assert [len(b["servers"]) for b in swarm["blocks"]] == [1, 2]
    assert sorted(s["blocks"] for s in swarm["servers"]) == sorted(SWARM)
    for server in swarm["servers"]:
        assert server["state"] == "online" and server["ping_ms"] is not None
        assert server["throughput"] > 0 and server["torch_dtype"] == "float32"


def test_greedy_text_is_the_transformers_engines_on_every_path(
    fed: LocalFederation, reference: PetalsNode
) -> None:
    import openai
    from websockets.asyncio.client import connect

    owner, pack_id = buy_pack(fed, 3000)
    d = fed.daemons[1]
    with SupernodeClient(d.url, identity=owner) as c:
        key = c.delegate(pack_id, max_credits=1000, expires_in_s=3600)
        for prompt in PROMPTS:
            want = node_generate(reference.url, prompt, 12)
            assert 0 < want["output_tokens"] <= 12 and want["outputs"]
            # the swarm node itself, then the daemon's native path, whole and streamed (SSE)
            assert node_generate(fed.nodes[0].url, prompt, 12)["outputs"] == want["outputs"]
            native = c.infer(pack_id, model(fed), prompt, max_new_tokens=12)
            assert native["output"] == want["outputs"]
            streamed = "".join(c.infer(pack_id, model(fed), prompt, max_new_tokens=12, stream=True))
            assert streamed == want["outputs"]
    with openai.OpenAI(base_url=f"{d.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
        prompt = PROMPTS[0]
        want = node_generate(reference.url, prompt, 10)["outputs"]
        comp = oa.completions.create(model=model(fed), prompt=prompt, max_tokens=10)
        assert comp.choices[0].text == want
        chunks = oa.completions.create(model=model(fed), prompt=prompt, max_tokens=10, stream=True)
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want

    async def ws_text(url: str) -> str:
        ws_url = url.replace("http://", "ws://") + "/api/v2/generate"
        async with connect(ws_url, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "open_inference_session", "max_length": 64}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["ok"] is True
            await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 10}))
            text = ""
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert msg["ok"] is True, msg
                text += msg["outputs"]
                if msg["stop"]:
                    return text

    assert asyncio.run(ws_text(fed.nodes[0].url)) == asyncio.run(ws_text(reference.url)) == want
    # scoring (what auditors ask) agrees too, within the default tolerance
    scored = [
        httpx.post(
            f"{url}/api/v1/score", data={"inputs": prompt, "outputs": want}, timeout=60
        ).json()
        for url in (fed.nodes[0].url, reference.url)
    ]
    assert scored[0]["first_failure"] is None and scored[1]["first_failure"] is None
    assert [p["top_id"] for p in scored[0]["positions"]] == [
        p["top_id"] for p in scored[1]["positions"]
    ]


def test_a_server_killed_mid_run_is_survived_when_another_holds_its_blocks(
    fed: LocalFederation,
) -> None:
    packs = [buy_pack(fed, 1000) for _ in range(3)]
    results: list[Any] = []

    def run(i: int) -> None:
        owner, pack_id = packs[i]
        with SupernodeClient(fed.daemons[i].url, identity=owner) as c:
            for k in range(3):
                try:
                    results.append(
                        c.infer(pack_id, model(fed), f"request {i} {k}", max_new_tokens=24)
                    )
                except Exception as exc:  # noqa: BLE001 - collected and checked below
                    results.append(exc)

    holders = fed.servers[1:]  # both hold block 1
    before = [sessions(s) for s in holders]
    node_log = fed.nodes[0].log_path
    logged = node_log.stat().st_size
    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    # the holder the swarm routes these requests through, SIGKILLed while they run
    busy = wait_until(
        lambda: [s for s, n in zip(holders, before, strict=True) if sessions(s) > n],
        timeout_s=60,
        interval_s=0.05,
        what="a session on a holder of block 1",
    )
    dead, other = busy[0], next(s for s in holders if s is not busy[0])
    taken_over = sessions(other)
    dead.kill()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 9
    bad = [r for r in results if not (isinstance(r, dict) and r["output"])]
    assert not bad, bad
    assert sessions(other) > taken_over  # the other holder ran the rest
    # and the node's own sessions survived the loss (no request failed there to be retried)
    with node_log.open("rb") as f:
        f.seek(logged)
        since = f.read().decode(errors="replace")
    assert "| ERROR" not in since and "Broken input cache" not in since, since[-3000:]
    # nothing of the killed server is left (its petals processes end with their supervisor)
    wait_until(
        lambda: not processes_mentioning(str(dead.log_path)),
        timeout_s=10,
        what="every process of the killed server gone",
    )
    # the node still reports the swarm whole: block 1 through the other server only
    swarm = wait_until(
        lambda: (
            (b := health(fed).json()["swarm"])["healthy"]
            and len(b["blocks"][1]["servers"]) == 1
            and b
        ),
        timeout_s=20,
        what="the swarm state to drop the dead server",
    )
    states = {s["state"] for s in swarm["servers"] if s["blocks"] == "1:2"}
    assert states <= {"online", "unreachable"} and not dead.running


def test_the_only_holder_of_a_block_killed_is_unhealthy_503_and_refunded(
    fed: LocalFederation,
) -> None:
    owner, pack_id = buy_pack(fed, 500)
    d = fed.daemons[2]
    with SupernodeClient(d.url, identity=owner) as c:
        q = c.validate_usage(pack_id, model(fed), "nobody home", {"max_new_tokens": 8}, 1000)[
            "payload"
        ]
        fed.servers[0].kill()  # block 0 is served by nobody now
        c.confirm_usage(q)  # certified, then the run finds the swarm broken
        wait_until(
            lambda: c.request_status(q["request_id"])["status"] == "failed",
            timeout_s=60,
            what="the run fails",
        )
        st = c.request_status(q["request_id"])
        assert st["refunded"] == q["cost"]
        wait_until(
            lambda: [balance(fed, i, pack_id) for i in range(3)] == [500] * 3,
            what="the full refund everywhere",
        )
        r = wait_until(
            lambda: (h := health(fed)).status_code == 503 and h, what="the node unhealthy"
        )
        body = r.json()
        assert body["status"] == "unhealthy" and "block 0:1" in body["reason"]
        assert body["swarm"]["blocks"][0]["servers"] == []
        # the node refuses at once; the daemon's menu empties and new requests get a 503
        g = httpx.post(
            f"{fed.nodes[0].url}/api/v1/generate",
            data={"inputs": "hi", "max_new_tokens": "4"},
            timeout=10,
        )
        assert g.status_code == 503 and g.json()["reason"] == "unhealthy"
        wait_until(
            lambda: (
                httpx.get(f"{d.url}/get_inference_model_menu", timeout=5).json()["models"] == []
            ),
            what="the menu empties",
        )
        with pytest.raises(SupernodeAPIError) as err:
            c.validate_usage(pack_id, model(fed), "again", {"max_new_tokens": 8}, 1000)
        assert err.value.status == 503 and err.value.body["reason"] == "no_healthy_node"


def test_devnet_on_a_swarm_serves_and_leaves_nothing_after_ctrl_c(tmp_path: Path) -> None:
    root = tmp_path / "devnet"
    log = (tmp_path / "devnet.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supernode.cli", "devnet", "--peers", "2", "--dir", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=PROJECT_ROOT,
        start_new_session=True,  # Ctrl-C is SIGINT to the devnet's process group
    )
    out = tmp_path / "devnet.out"
    try:
        wait_until(
            lambda: b"Ctrl-C stops" in out.read_bytes() or proc.poll() is not None,
            timeout_s=240,
            interval_s=0.5,
            what="the devnet to start",
        )
        text = out.read_text()
        assert proc.poll() is None, text
        assert "over Petals server 0 (blocks 0:1)" in text and "(blocks 1:2)" in text
        node = text.split("Petals node ", 1)[1].split()[0]
        assert httpx.get(f"{node}/health", timeout=10).json()["engine"] == "petals"
        assert processes_mentioning(str(root))  # its processes are there, found this way
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        assert "stopping the devnet" in out.read_text()
        wait_until(
            lambda: not processes_mentioning(str(root)),
            timeout_s=20,
            what="no process of the devnet left",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
