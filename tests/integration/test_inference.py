"""Paid inference with real processes: anvil, four daemons and two petals-nodes serving a
tiny random Llama. Native flow, OpenAI SDK, streaming, fail-over, refunds, bad input."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS, buy_pack, pack_state, settled_balance, wait_until

pytestmark = pytest.mark.integration
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_QUORUM_TIMEOUT_S": "3",
    "SUPERNODE_NODE_REQUEST_TIMEOUT_S": "3",
    "SUPERNODE_NODE_STREAM_IDLE_TIMEOUT_S": "3",
    "SUPERNODE_NODE_HEALTH_INTERVAL_S": "1",
    "SUPERNODE_NODE_BREAKER_RESET_S": "2",
    "SUPERNODE_MAX_NEW_TOKENS": "64",
    "SUPERNODE_MAX_INPUT_TOKENS": "200",
    # the tests here count the nodes' generations; audits (tests/integration/test_reputation.py)
    # would add their re-runs to the count
    "SUPERNODE_AUDITS_ENABLED": "false",
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("inference"), peers=4, petals_nodes=2, settings=dict(SETTINGS)
    ) as f:
        yield f


def balance(fed: LocalFederation, i: int, pack_id: str) -> int | None:
    state = pack_state(fed, i, pack_id)
    return state["remaining_credits"] if state else None


def balances_settle(fed: LocalFederation, pack_id: str, expected: int) -> None:
    wait_until(
        lambda: [balance(fed, i, pack_id) for i in range(4)] == [expected] * 4,
        timeout_s=20,
        what=f"every daemon at {expected}",
    )


def model(fed: LocalFederation) -> str:
    return fed.nodes[0].model


def test_native_flow_bills_the_same_everywhere(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 2000)
    with SupernodeClient(fed.daemons[1].url, identity=owner) as c:
        menu = c.model_menu()
        assert [m["model"] for m in menu] == [model(fed)] and menu[0]["nodes"] == 2
        quote = c.validate_usage(
            pack_id, model(fed), "the cat sat on the mat", {"max_new_tokens": 12}, 10_000
        )
        assert quote["sender"] == fed.daemons[1].address  # signed by the supernode
        q = quote["payload"]
        assert q["cost"] == q["prompt_tokens"] * 1 + 12 * 2
        started = c.confirm_usage(q)
        assert started["status"] == "running" and len(started["certificate"]["votes"]) >= 3
        wait_until(lambda: c.request_status(q["request_id"])["status"] == "completed")
        out = c.retrieve_result(q["request_id"])
    assert out["output"] and out["output_tokens"] <= 12
    spent = out["cost"]
    assert 0 < spent <= q["cost"]
    balances_settle(fed, pack_id, 2000 - spent)  # certified spend minus the refund, everywhere
    # every peer learnt the signed result summary
    for i in (0, 2, 3):
        wait_until(
            lambda i=i: (
                httpx.get(
                    f"{fed.daemons[i].url}/check_status_of_inference_request_results/{q['request_id']}",
                    timeout=5,
                )
                .json()
                .get("status")
                == "completed"
            ),
            what=f"summary at daemon {i}",
        )
    # only the requester (or the operator) reads the output
    with SupernodeClient(fed.daemons[1].url, identity=Identity.generate()) as other:
        with pytest.raises(SupernodeAPIError) as err:
            other.retrieve_result(q["request_id"])
    assert err.value.status == 403


def test_greedy_output_is_deterministic_and_streams(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 2000)
    with SupernodeClient(fed.daemons[2].url, identity=owner) as c:
        a = c.infer(pack_id, model(fed), "one two three", max_new_tokens=10)["output"]
        b = c.infer(pack_id, model(fed), "one two three", max_new_tokens=10)["output"]
        streamed = "".join(
            c.infer(pack_id, model(fed), "one two three", max_new_tokens=10, stream=True)
        )
    assert a == b == streamed and a


def test_websocket_stream(fed: LocalFederation) -> None:
    from websockets.asyncio.client import connect

    owner, pack_id = buy_pack(fed, 2000)
    d = fed.daemons[3]
    with SupernodeClient(d.url, identity=owner) as c:
        q = c.validate_usage(pack_id, model(fed), "hello there", {"max_new_tokens": 10}, 10_000)[
            "payload"
        ]
        c.confirm_usage(q)
        ch = c._call(
            "GET",
            f"/request_challenge/{owner.address}",
            params={"endpoint": "/stream_inference_output"},
        )
        sig = owner.sign_text(ch["text"])
        expected_later = q["request_id"]

    async def read() -> list[Any]:
        url = (
            d.url.replace("http://", "ws://") + f"/ws/inference/{expected_later}"
            f"?address={owner.address}&challenge_id={ch['challenge_id']}&signature={sig}"
        )
        got = []
        async with connect(url, open_timeout=5) as ws:
            while True:
                msg = __import__("json").loads(await asyncio.wait_for(ws.recv(), 10))
                got.append(msg)
                if "done" in msg or "error" in msg:
                    return got

    msgs = asyncio.run(read())
    assert msgs[-1] == {"done": True} and "".join(m.get("text", "") for m in msgs)


def test_openai_sdk_spends_through_a_delegation(fed: LocalFederation) -> None:
    import openai

    owner, pack_id = buy_pack(fed, 1000)
    d = fed.daemons[0]
    with SupernodeClient(d.url, identity=owner) as c:
        key = c.delegate(pack_id, max_credits=150, expires_in_s=3600)
    client = openai.OpenAI(base_url=f"{d.url}/v1", api_key=key, max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == [model(fed)]
    raw = client.completions.with_raw_response.create(
        model=model(fed), prompt="the quick brown fox", max_tokens=8
    )
    comp = raw.parse()
    assert comp.choices[0].text and comp.usage and comp.usage.completion_tokens <= 8
    # where the time went: the quote, then the model (the spend is settled afterwards)
    timing = {
        name: float(dur)
        for name, _, dur in (
            p.strip().partition(";dur=") for p in raw.headers["server-timing"].split(",")
        )
    }
    assert set(timing) == {"prepare", "generate", "total"}, timing
    assert 0 < timing["prepare"] < timing["total"]
    assert timing["prepare"] + timing["generate"] <= timing["total"]
    chat = client.chat.completions.create(
        model=model(fed), max_tokens=8, messages=[{"role": "user", "content": "hi there"}]
    )
    assert chat.choices[0].message.content
    chunks = client.chat.completions.create(
        model=model(fed), max_tokens=8, stream=True, messages=[{"role": "user", "content": "hello"}]
    )
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    assert text
    from supernode.credits.orders import reservation_id
    from supernode.inference.openai import decode_api_key

    mine = reservation_id(pack_id, decode_api_key(key)["id"])  # the key's reserved credits
    wait_until(lambda: (balance(fed, 0, mine) or 150) < 150, what="spent")
    spent = 150 - settled_balance(fed, mine)
    assert spent > 0 and settled_balance(fed, pack_id) == 850  # the pack gave 150, no more
    # the cap holds: ask for more than the delegation has left
    with pytest.raises(openai.RateLimitError) as err:  # OpenAI's exhausted quota
        client.completions.create(model=model(fed), prompt="x " * 100, max_tokens=64)
    assert err.value.code == "insufficient_quota"
    # an expired delegation, a malformed key, and a key for another supernode: refused
    from supernode.inference.openai import encode_api_key

    net = fed.network
    assert net is not None
    expired = encode_api_key(
        sign_envelope(
            owner,
            type_="spend_delegation",
            network_id=net.network_id,
            chain_id=net.chain_id,
            payload={"pack_id": pack_id, "delegate": d.address, "max_credits": 100},
            now=int(time.time()) - 600,
            ttl_s=60,
        ).to_wire()
    )
    with SupernodeClient(fed.daemons[1].url, identity=owner) as c:
        elsewhere = c.delegate(pack_id, max_credits=100, expires_in_s=600)
    wait_until(lambda: settled_balance(fed, pack_id) == 750, what="the second reservation")
    for bad in (expired, "sn-notakey", "sk-openai-style", elsewhere):
        with openai.OpenAI(base_url=f"{d.url}/v1", api_key=bad, max_retries=0) as other:
            with pytest.raises(openai.AuthenticationError):
                other.completions.create(model=model(fed), prompt="hi", max_tokens=4)
    client.close()
    balances_settle(fed, mine, 150 - spent)  # none of that cost anything


def _tokenized(fed: LocalFederation) -> int:
    return sum(httpx.get(f"{n.url}/health", timeout=5).json()["tokenized"] for n in fed.nodes)


def _node_count(fed: LocalFederation, text: str) -> int:
    r = httpx.post(f"{fed.nodes[0].url}/api/v1/tokenize", data={"inputs": text}, timeout=10)
    return int(r.json()["token_count"])


def test_token_counts_move_to_the_daemon_and_agree_with_the_node(fed: LocalFederation) -> None:
    import openai

    owner, pack_id = buy_pack(fed, 2000)
    d = fed.daemons[3]
    with SupernodeClient(d.url, identity=owner) as c:
        key = c.delegate(pack_id, max_credits=1500, expires_in_s=3600)

    def counts() -> str:
        with SupernodeClient(d.url) as c:
            return str(c.model_menu()[0]["token_counts"])

    prompts = ["a first prompt", "Hello, World! 42: zzyzx", "  spaced \t out\n", "the " * 40]
    with openai.OpenAI(base_url=f"{d.url}/v1", api_key=key, max_retries=0, timeout=30) as client:
        client.completions.create(model=model(fed), prompt=prompts[0], max_tokens=2)
        wait_until(lambda: counts() == "local", what="the daemon counts tokens itself")
        before = _tokenized(fed)
        usage = [
            client.completions.create(model=model(fed), prompt=p, max_tokens=2).usage
            for p in prompts
        ]
    assert _tokenized(fed) == before  # the node was not asked to count any of them
    assert [u.prompt_tokens for u in usage if u] == [_node_count(fed, p) for p in prompts]


def test_bad_requests_refused_with_reasons_and_nothing_spent(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 100)
    d = fed.daemons[2]
    net = fed.network
    assert net is not None

    def usage(signer: Identity, **over: Any) -> httpx.Response:
        payload = {
            "pack_id": pack_id,
            "model": model(fed),
            "input": "hello world",
            "params": {"max_new_tokens": 8},
            "max_cost": 10_000,
            **over,
        }
        env = sign_envelope(
            signer,
            type_="inference_usage_request",
            network_id=net.network_id,
            chain_id=net.chain_id,
            payload=payload,
        )
        return httpx.post(
            f"{d.url}/validate_inference_api_usage_request",
            content=env.model_dump_json(),
            timeout=10,
        )

    for resp, status, reason in [
        (usage(owner, model="no-such-model"), 422, "unknown_model"),
        (usage(owner, params={"max_new_tokens": 10_000}), 422, "bad_params"),
        (usage(owner, input="word " * 400), 422, "too_many_tokens"),
        (usage(owner, params={"max_new_tokens": 60}, input="x " * 60), 422, "insufficient_credits"),
        (usage(owner, max_cost=3), 422, "over_max_cost"),
        (usage(Identity.generate()), 422, "not_owner"),
        (usage(owner, params={"max_new_tokens": 8, "temperature": 99_999}), 422, "bad_params"),
    ]:
        assert resp.status_code == status, resp.text
        if reason:
            assert resp.json()["reason"] == reason, resp.text
    # an order for the wrong amount, or signed by someone else
    with SupernodeClient(d.url, identity=owner) as c:
        q = c.validate_usage(pack_id, model(fed), "hello", {"max_new_tokens": 4}, 1000)["payload"]
        wrong = c.spend_order(pack_id, q["cost"] - 1, request_id=q["request_id"])
    r = httpx.post(f"{d.url}/process_inference_confirmation", json=wrong, timeout=10)
    assert r.status_code == 422 and r.json()["reason"] == "wrong_amount"
    with SupernodeClient(d.url, identity=Identity.generate()) as c:
        forged = c.spend_order(pack_id, q["cost"], request_id=q["request_id"], sequence=0)
    r = httpx.post(f"{d.url}/process_inference_confirmation", json=forged, timeout=10)
    assert r.status_code == 422 and r.json()["reason"] == "not_owner"
    time.sleep(0.5)
    assert [balance(fed, i, pack_id) for i in range(4)] == [100] * 4


def test_replayed_order_runs_once(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 2000)
    d = fed.daemons[1]
    served_before = sum(_served(n.url) for n in fed.nodes)
    with SupernodeClient(d.url, identity=owner) as c:
        q = c.validate_usage(pack_id, model(fed), "replay me", {"max_new_tokens": 6}, 1000)[
            "payload"
        ]
        order = c.spend_order(pack_id, q["cost"], request_id=q["request_id"])
    first = httpx.post(f"{d.url}/process_inference_confirmation", json=order, timeout=15)
    assert first.status_code == 200
    again = [
        httpx.post(f"{x.url}/process_inference_confirmation", json=order, timeout=15)
        for x in (d, d, fed.daemons[0])
    ]
    assert again[0].status_code == 200 and again[1].status_code == 200
    assert again[2].status_code in (404, 422)  # not quoted there: nothing to run
    with SupernodeClient(d.url, identity=owner) as c:
        wait_until(lambda: c.request_status(q["request_id"])["status"] == "completed")
        spent = c.retrieve_result(q["request_id"])["cost"]
    balances_settle(fed, pack_id, 2000 - spent)
    assert sum(_served(n.url) for n in fed.nodes) - served_before == 1


def _served(url: str) -> int:
    served = httpx.get(f"{url}/health", timeout=5).json()["served"]  # {"v1": n, "v2": m}
    return sum(served.values())


def test_failover_kill_and_hang(fed: LocalFederation) -> None:
    # one pack per concurrent client: an owner's orders on one pack take turns (sequence)
    packs = [buy_pack(fed, 1000) for _ in range(4)]
    results: list[Any] = []

    def run(i: int) -> None:
        owner, pack_id = packs[i]
        with SupernodeClient(fed.daemons[i].url, identity=owner) as c:
            for k in range(3):
                try:
                    results.append(
                        c.infer(pack_id, model(fed), f"request {i} {k}", max_new_tokens=16)
                    )
                except Exception as exc:  # noqa: BLE001 - collected and checked below
                    results.append(exc)

    # one of the two nodes is killed while requests run: they still succeed
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    fed.nodes[1].kill()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 12
    bad = [r for r in results if not (isinstance(r, dict) and r["output"])]
    assert not bad, bad
    fed.nodes[1].start()
    fed.nodes[1].wait_ready()
    owner, pack_id = packs[0]
    # a node that hangs: the request fails over within about the configured timeout (3 s)
    fed.nodes[0].suspend()
    try:
        with SupernodeClient(fed.daemons[0].url, identity=owner) as c:
            t0 = time.time()
            for _ in range(2):  # round robin: at least one of these goes to the hung node
                assert c.infer(pack_id, model(fed), "are you there", max_new_tokens=8)["output"]
            assert time.time() - t0 < 3 * 2 + 6
    finally:
        fed.nodes[0].resume()


def test_all_nodes_down_gives_503_and_a_refund(fed: LocalFederation) -> None:
    owner, pack_id = buy_pack(fed, 500)
    d = fed.daemons[3]
    with SupernodeClient(d.url, identity=owner) as c:
        q = c.validate_usage(pack_id, model(fed), "nobody home", {"max_new_tokens": 8}, 1000)[
            "payload"
        ]
        for n in fed.nodes:
            n.kill()
        try:
            c.confirm_usage(q)  # certified, then the run finds no node
            wait_until(
                lambda: c.request_status(q["request_id"])["status"] == "failed",
                timeout_s=30,
                what="the run fails",
            )
            st = c.request_status(q["request_id"])
            assert st["refunded"] == q["cost"] and "node" in (st["error"] or "")
            balances_settle(fed, pack_id, 500)  # spent, then refunded in full, everywhere
            # while no node is up, new requests get a clear 503
            wait_until(
                lambda: (
                    httpx.get(f"{d.url}/get_inference_model_menu", timeout=5).json()["models"] == []
                ),
                what="the menu empties",
            )
            with pytest.raises(SupernodeAPIError) as err:
                c.validate_usage(pack_id, model(fed), "again", {"max_new_tokens": 8}, 1000)
            assert err.value.status == 503 and err.value.body["reason"] == "no_healthy_node"
        finally:
            for n in fed.nodes:
                n.start()
            for n in fed.nodes:
                n.wait_ready()


def test_cli_infer_and_delegate(fed: LocalFederation, tmp_path: Any) -> None:
    import subprocess
    import sys

    import openai

    owner, pack_id = buy_pack(fed, 500)
    key_file = tmp_path / "owner.key"
    key_file.write_text(owner.private_key.hex())
    sn = fed.daemons[2].url

    def cli(command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`supernode client COMMAND` as the owner, on daemon 2's pack."""
        return subprocess.run(
            [sys.executable, "-m", "supernode.cli", "client", command, "--supernode", sn]
            + ["--key", str(key_file), "--pack", pack_id, *args]
            + ["--orders-file", str(tmp_path / "orders.json")],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli("infer", "--model", model(fed), "--max-new-tokens", "8", "the cat sat on the")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert json.loads((tmp_path / "orders.json").read_text()) == {}  # certified: not kept
    delegated = cli("delegate", "--max-credits", "100", "--expires", "600")
    assert delegated.returncode == 0, delegated.stderr
    key = delegated.stdout.strip()
    assert key.startswith("sn-")
    with openai.OpenAI(base_url=f"{sn}/v1", api_key=key, max_retries=0) as client:
        chat = client.chat.completions.create(
            model=model(fed), max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.choices[0].message.content
    bad = cli("infer", "--model", "nope", "hello")
    assert bad.returncode == 1 and "not on this supernode's menu" in bad.stderr, bad.stderr
