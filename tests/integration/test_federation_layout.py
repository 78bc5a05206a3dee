"""A federation laid out for audits, with real processes: each daemon has its own Petals node
(an honest one, one serving another model under the same name, one behind a proxy that cuts
its text but bills in full), and anvil mines a block every second. Also: stop() leaves no
process behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from supernode.devnet import LocalFederation, NodeSpec
from tests.conftest import (
    TEST_SETTINGS,
    cheating_front,
    group_alive,
    pid_alive,
    processes_mentioning,
    wait_until,
)

pytestmark = pytest.mark.integration

HONEST, OTHER_SEED, TRUNCATING = 0, 1, 2  # indexes into fed.nodes
NODE_SPECS = [NodeSpec(), NodeSpec(seed=1), NodeSpec(front=cheating_front(8))]
NODE_MAP = {0: [HONEST], 1: [OTHER_SEED], 2: [TRUNCATING], 3: [HONEST]}
PROMPT = "the cat sat on the mat and then the dog"
MAX_NEW = 16


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("layout"),
        peers=4,
        node_specs=list(NODE_SPECS),
        node_map=dict(NODE_MAP),
        block_time=1,
        settings={**TEST_SETTINGS, "SUPERNODE_NODE_HEALTH_INTERVAL_S": "1"},
    ) as f:
        yield f


def generate(url: str, model: str) -> dict[str, Any]:
    """A greedy answer straight from a node (not through a daemon)."""
    form = {"model": model, "inputs": PROMPT, "max_new_tokens": MAX_NEW, "do_sample": "false"}
    r = httpx.post(f"{url}/api/v1/generate", data=form, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def stream(url: str, model: str) -> list[dict[str, Any]]:
    """A greedy v2 session step straight from a node: every message until ``stop``."""
    ws_url = url.replace("http://", "ws://") + "/api/v2/generate"
    events = []
    with connect(ws_url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "open_inference_session", "model": model}))
        assert json.loads(ws.recv(timeout=10)) == {"ok": True}
        step = {"type": "generate", "inputs": PROMPT, "max_new_tokens": MAX_NEW, "do_sample": 0}
        ws.send(json.dumps(step))
        while not events or not events[-1].get("stop"):
            events.append(json.loads(ws.recv(timeout=30)))
            assert events[-1]["ok"] is True, events[-1]
    return events


def test_every_node_serves_one_model_name_and_tokenizer(fed: LocalFederation) -> None:
    names = {n.model for n in fed.nodes}
    assert names == {"tiny-llama"}
    assert fed.nodes[OTHER_SEED].model_dir != fed.nodes[HONEST].model_dir
    tokenizers = set()
    for n in fed.nodes:
        health = httpx.get(f"{n.url}/health", timeout=5).json()
        assert health["models"] == ["tiny-llama"], (n.index, health)
        r = httpx.get(f"{n.url}/api/v1/tokenizer", params={"model": "tiny-llama"}, timeout=10)
        assert r.status_code == 200
        tokenizers.add(r.content)
    assert len(tokenizers) == 1  # the same tokenizer.json from every node, proxy included


def test_each_daemon_uses_only_its_own_node(fed: LocalFederation) -> None:
    for daemon, picks in NODE_MAP.items():
        urls = fed.daemons[daemon].env["SUPERNODE_PETALS_NODES"].split(",")
        assert urls == [fed.nodes[j].url for j in picks]

    def menus() -> list[Any] | None:
        got = [
            httpx.get(f"{d.url}/get_inference_model_menu", timeout=5).json() for d in fed.daemons
        ]
        return got if all(menu["models"] for menu in got) else None

    seen = wait_until(menus, timeout_s=15, what="every daemon's node healthy")
    for menu in seen:  # one node each (without the map, every daemon would count three)
        assert [(m["model"], m["nodes"]) for m in menu["models"]] == [("tiny-llama", 1)]


def test_another_seed_answers_differently_under_the_same_name(fed: LocalFederation) -> None:
    model = fed.nodes[HONEST].model
    honest = generate(fed.nodes[HONEST].url, model)
    assert generate(fed.nodes[HONEST].url, model)["outputs"] == honest["outputs"]  # greedy
    other = generate(fed.nodes[OTHER_SEED].url, model)
    assert other["model"] == honest["model"] == model
    assert other["output_tokens"] == honest["output_tokens"] == MAX_NEW
    assert other["outputs"] != honest["outputs"]


def test_truncating_proxy_cuts_text_and_bills_in_full(fed: LocalFederation) -> None:
    node = fed.nodes[TRUNCATING]
    assert node.url != node.upstream_url
    model = node.model
    full = generate(node.upstream_url, model)
    assert len(full["outputs"]) > 8 and full["output_tokens"] == MAX_NEW
    assert full["outputs"] == generate(fed.nodes[HONEST].url, model)["outputs"]  # seed 0
    cut = generate(node.url, model)
    assert cut["outputs"] == full["outputs"][:8]
    assert cut["output_tokens"] == full["output_tokens"] == MAX_NEW
    assert cut["input_tokens"] == full["input_tokens"]

    whole = stream(node.upstream_url, model)
    streamed = stream(node.url, model)
    assert "".join(e["outputs"] for e in whole) == full["outputs"]
    assert "".join(e["outputs"] for e in streamed) == full["outputs"][:8]
    assert len(streamed) == len(whole)  # every chunk passes, emptied past the limit
    assert [e["token_count"] for e in streamed] == [e["token_count"] for e in whole]
    assert streamed[-1]["output_tokens"] == MAX_NEW


def test_blocks_advance_on_their_own(fed: LocalFederation) -> None:
    assert fed.anvil is not None
    first = int(fed.anvil.rpc("eth_blockNumber"), 16)
    wait_until(
        lambda: int(fed.anvil.rpc("eth_blockNumber"), 16) >= first + 2,  # type: ignore[union-attr]
        timeout_s=6,
        interval_s=0.2,
        what="two blocks mined with no transaction",
    )


def test_stop_leaves_no_process_behind(fed: LocalFederation) -> None:
    """Runs last: it stops the module's federation."""
    assert fed.anvil is not None and fed.anvil.proc is not None
    pids = [fed.anvil.proc.pid] + [d.proc.pid for d in fed.daemons if d.proc is not None]
    groups = [p.pid for n in fed.nodes for p in n.processes]
    assert len(pids) == 5 and len(groups) == 4  # three nodes and one proxy
    assert all(pid_alive(p) for p in pids) and all(group_alive(g) for g in groups)
    assert processes_mentioning(str(fed.root))  # the check below can see them
    t0 = time.monotonic()
    fed.stop()
    assert time.monotonic() - t0 < 30
    assert [p for p in pids if pid_alive(p)] == []
    assert [g for g in groups if group_alive(g)] == []
    assert processes_mentioning(str(fed.root)) == []
