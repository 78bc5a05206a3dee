"""Every network wait of the peer plane has a timeout that fires: pushes, batched vote
requests, chain reads."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from supernode.chain.client import ChainClient, ChainError
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.federation.gossip import PeerLink, PushSettings
from supernode.federation.peer_http import PeerHTTP
from supernode.federation.rpc import BatchedCall
from tests.unit.federation.test_intake import KEYS, NETWORK


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=2)
    for c in conns:
        c.close()
    srv.close()


async def test_push_timeout_fires_and_retries_are_bounded(silent_server: str) -> None:
    member = NETWORK.members[1].model_copy(update={"url": silent_server})
    cfg = PushSettings(timeout_s=0.2, retries=2, backoff_s=0.05, batch_max=10, queue_max=100)
    client = PeerHTTP()
    try:
        link = PeerLink(member, KEYS[0], NETWORK, cfg, client)
        link.start()
        env = sign_envelope(
            KEYS[0],
            type_="sn_message",
            network_id=NETWORK.network_id,
            chain_id=NETWORK.chain_id,
            payload={"message_type": "t", "message_body": "x"},
        )
        fut = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        link.enqueue(env.id, canonical_json(env.to_wire()), fut)
        result = await asyncio.wait_for(fut, timeout=5)
        elapsed = time.monotonic() - started
        await link.stop()
    finally:
        await client.close()
    assert result["ok"] is False and "Timeout" in result["error"]
    # three tries of 0.2 s plus two short back-offs: well under the 5 s guard
    assert 0.6 <= elapsed < 3
    assert link.failed_batches == 1 and link.down_until > time.time() - 1
    # while marked down, new envelopes are left to anti-entropy at once
    fut2 = asyncio.get_running_loop().create_future()
    link.enqueue("0x" + "00" * 32, b"{}", fut2)
    assert fut2.done() and fut2.result()["ok"] is False


async def test_batched_call_times_out_every_waiter_and_batches_what_queued(
    silent_server: str,
) -> None:
    member = NETWORK.members[1].model_copy(update={"url": silent_server})
    cfg = PushSettings(timeout_s=0.2, retries=0, backoff_s=0.05, batch_max=10, queue_max=100)
    link = PeerLink(member, KEYS[0], NETWORK, cfg, PeerHTTP())
    asker = BatchedCall(
        link, KEYS[0], NETWORK, path="/p2p/x", type_="x", batch_max=3, in_flight=1, timeout_s=0.2
    )
    try:
        started = time.monotonic()
        futs = [asker.call({"n": i}) for i in range(7)]  # 1 goes at once, 6 queue behind it
        outcomes = await asyncio.wait_for(asyncio.gather(*futs), timeout=5)
        elapsed = time.monotonic() - started
    finally:
        await asker.stop()
        await link.client.close()
    assert all(data is None and "unreachable" in (why or "") for data, why in outcomes)
    assert (asker.batches, asker.items) == (3, 7)  # [0], then [1, 2, 3] and [4, 5, 6]
    assert 0.55 <= elapsed < 3  # three timed-out requests of 0.2 s, one after another


async def test_batched_call_lingers_only_as_long_as_its_callers_allow() -> None:
    """Items whose callers can wait share one batch sent when the linger ends; an item
    whose caller cannot wait, or a full batch, takes everything queued at once."""
    from aiohttp import web

    batches: list[list[int]] = []

    async def answer(request: web.Request) -> web.Response:
        items = (await request.json())["payload"]["items"]
        batches.append([i["n"] for i in items])
        return web.json_response({"results": [{"ok": i["n"]} for i in items]})

    app = web.Application()
    app.router.add_post("/p2p/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    member = NETWORK.members[1].model_copy(update={"url": f"http://127.0.0.1:{port}"})
    cfg = PushSettings(timeout_s=2, retries=0, backoff_s=0.05, batch_max=10, queue_max=100)
    link = PeerLink(member, KEYS[0], NETWORK, cfg, PeerHTTP())
    asker = BatchedCall(
        link, KEYS[0], NETWORK, path="/p2p/x", type_="x", batch_max=3, in_flight=1, timeout_s=2
    )

    async def timed(*calls: tuple[int, float]) -> float:
        started = time.monotonic()
        futs = [asker.call({"n": n}, linger_s=linger) for n, linger in calls]
        outcomes = await asyncio.wait_for(asyncio.gather(*futs), timeout=5)
        assert outcomes == [(n, None) for n, _ in calls]
        return time.monotonic() - started

    try:
        await timed((0, 0.0))  # the connection is open: what follows times the batching
        assert await timed((1, 0.3), (2, 0.3)) >= 0.28  # they waited for the linger
        assert await timed((3, 0.3), (4, 0.0)) < 0.25  # 4 cannot wait: 3 goes with it
        assert await timed((5, 0.3), (6, 0.3), (7, 0.3)) < 0.25  # a full batch leaves
    finally:
        await asker.stop()
        await link.client.close()
        await runner.cleanup()
    assert batches == [[0], [1, 2], [3, 4], [5, 6, 7]]


async def test_chain_read_timeout_fires(silent_server: str) -> None:
    chain = ChainClient(silent_server, timeout_s=0.2, read_retries=1)
    started = time.monotonic()
    with pytest.raises(ChainError):
        await chain.block_number()
    assert time.monotonic() - started < 3
    await chain.close()


async def test_chain_unreachable_is_a_chain_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chain = ChainClient(f"http://127.0.0.1:{port}", timeout_s=0.5, read_retries=1)
    with pytest.raises(ChainError):
        await chain.balance(Identity.generate().address)
    await chain.close()
