"""Four real `supernode run` processes and anvil, on 127.0.0.1.

Member 4 is listed in the network file but runs no daemon and holds no collateral: it
is the test's own hand for acting as a (misbehaving) member, and the ineligible one.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import LocalFederation
from supernode.federation.transport import (
    ENVELOPE_FETCH,
    SYNC_REQUEST,
    batch_body,
    sign_transport,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def op(fed: LocalFederation, i: int) -> SupernodeClient:
    d = fed.daemons[i]
    return SupernodeClient(d.url, operator_token=d.token)


def messages_of(fed: LocalFederation, i: int, mtype: str) -> list[dict[str, Any]]:
    with SupernodeClient(fed.daemons[i].url) as c:
        return c.messages(last_k_minutes=60, message_type=mtype, limit=100_000)


def all_have(fed: LocalFederation, mtype: str, n: int, peers: range | None = None) -> bool:
    return all(len(messages_of(fed, i, mtype)) >= n for i in (peers or range(len(fed.daemons))))


def push(
    fed: LocalFederation,
    pusher: Identity,
    to: int,
    envs: list[dict[str, Any]],
    ids: list[str] | None = None,
) -> httpx.Response:
    """Push envelopes to daemon ``to`` as member ``pusher`` (the p2p wire, for real)."""
    net = fed.network
    assert net is not None
    body = batch_body(
        pusher,
        net.network_id,
        net.chain_id,
        fed.daemons[to].address,
        ids if ids is not None else [e["id"] for e in envs],
        [canonical_json(e) for e in envs],
    )
    return httpx.post(
        f"{fed.daemons[to].url}/p2p/envelopes",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )


def pull(
    fed: LocalFederation,
    puller: Identity,
    at: int,
    path: str,
    type_: str,
    payload: dict[str, Any],
    recipient: int | None = None,
) -> httpx.Response:
    """An anti-entropy call to daemon ``at`` as ``puller`` (bound to daemon ``recipient``,
    by default the one asked)."""
    assert fed.network is not None
    to = fed.daemons[at if recipient is None else recipient].address
    return httpx.post(
        f"{fed.daemons[at].url}{path}",
        content=sign_transport(puller, fed.network, type_, to, payload),
        headers={"content-type": "application/json"},
        timeout=10,
    )


def sn_message(
    fed: LocalFederation, signer: Identity, mtype: str, body: str, **kw: Any
) -> dict[str, Any]:
    net = fed.network
    assert net is not None
    return sign_envelope(
        signer,
        type_="sn_message",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={"message_type": mtype, "message_body": body},
        **kw,
    ).to_wire()


def test_broadcast_reaches_every_peer_with_matching_metadata(federation: LocalFederation) -> None:
    fed = federation
    mtype = "bcast-" + secrets.token_hex(3)
    with op(fed, 0) as c:
        res = [c.broadcast_to_all(mtype, f"hello {i}", wait_s=5) for i in range(5)]
    # each push was acknowledged by the three running peers; member 4 has no daemon
    for r in res:
        delivered = r["delivered"]
        assert sum(1 for v in delivered.values() if v is True) == 3
        assert delivered[fed.network.members[4].address] is not True  # type: ignore[union-attr]
    wait_until(lambda: all_have(fed, mtype, 5), what="every peer stores the 5 messages")
    ids = {m["envelope_id"] for m in messages_of(fed, 0, mtype)}
    for i in range(4):
        got = messages_of(fed, i, mtype)
        assert {m["envelope_id"] for m in got} == ids and len(got) == 5
        assert all(m["sending_sn_address"] == fed.daemons[0].address for m in got)
        with SupernodeClient(fed.daemons[i].url) as c:
            meta = c.message_metadata()
        by_type = {r["message_type"]: r for r in meta["by_type"]}
        assert by_type[mtype]["total_messages"] == 5
        assert by_type[mtype]["total_bytes"] == sum(len(f"hello {k}") for k in range(5))


def test_direct_message_reaches_only_its_recipient(federation: LocalFederation) -> None:
    fed = federation
    mtype = "direct-" + secrets.token_hex(3)
    with op(fed, 1) as c:
        r = c.send_message(fed.daemons[2].address, mtype, "for two only", wait_s=5)
    assert r["delivered"] == {fed.daemons[2].address: True}
    wait_until(lambda: len(messages_of(fed, 2, mtype)) == 1, what="recipient stores it")
    # anti-entropy never hands it to anyone else
    import time

    time.sleep(1.5)
    assert messages_of(fed, 0, mtype) == [] and messages_of(fed, 3, mtype) == []
    # a pull from daemon 2 by member 0 neither lists it nor hands it out...
    dm = r["envelope_id"]
    with op(fed, 1) as c:  # ...but does list and hand out a broadcast
        bcast = c.broadcast_to_all(mtype + "-all", "for all", wait_s=5)["envelope_id"]
    wait_until(lambda: len(messages_of(fed, 2, mtype + "-all")) == 1, what="broadcast stored")
    member0 = fed.identity(0)
    listed = pull(fed, member0, 2, "/p2p/sync", SYNC_REQUEST, {"after": 0, "limit": 100_000})
    assert listed.status_code == 200, listed.text
    assert dm not in listed.json()["ids"] and bcast in listed.json()["ids"]
    got = pull(fed, member0, 2, "/p2p/fetch", ENVELOPE_FETCH, {"ids": [dm, bcast]})
    assert got.status_code == 200, got.text
    assert [e["id"] for e in got.json()["envelopes"]] == [bcast]
    # a fetch is a member's, bound to the peer it asks, and bounded
    for who, to, payload in [
        (Identity.generate(), 2, {"ids": [bcast]}),
        (member0, 3, {"ids": [bcast]}),
        (member0, 2, {"ids": []}),
        (member0, 2, {"ids": ["0x12"]}),
    ]:
        r2 = pull(fed, who, 2, "/p2p/fetch", ENVELOPE_FETCH, payload, recipient=to)
        assert 400 <= r2.status_code < 500, r2.text


def test_user_message_through_a_is_readable_through_c(federation: LocalFederation) -> None:
    fed = federation
    alice, bob = Identity.generate(), Identity.generate()
    with SupernodeClient(fed.daemons[0].url, identity=alice) as a:
        sent = a.send_user_message(bob.address, "hi bob, via A")
    assert sent["relayed_by"] == fed.daemons[0].address

    def bob_reads() -> list[dict[str, Any]]:
        with SupernodeClient(fed.daemons[2].url, identity=bob) as c:
            return c.user_messages()

    got = wait_until(bob_reads, what="bob reads the message at C")
    assert [(m["from_address"], m["to_address"], m["message_body"]) for m in got] == [
        (alice.address, bob.address, "hi bob, via A")
    ]
    # someone else may not read bob's messages; a challenge answers once
    with SupernodeClient(fed.daemons[2].url, identity=alice) as c:
        with pytest.raises(SupernodeAPIError) as err:
            c.user_messages(bob.address)
        assert err.value.status == 403
        headers = c.auth_headers("/get_user_messages")
        ok = c.http.get(f"/get_user_messages/{alice.address}", headers=headers)
        assert ok.status_code == 200
        replay = c.http.get(f"/get_user_messages/{alice.address}", headers=headers)
        assert replay.status_code == 401 and "challenge" in replay.json()["detail"]
        # a challenge for one endpoint does not open another
        other = c.auth_headers("/send_user_message")
        wrong = c.http.get(f"/get_user_messages/{alice.address}", headers=other)
        assert wrong.status_code == 401


def test_killed_peer_catches_up_by_anti_entropy_without_duplicates(
    federation: LocalFederation,
) -> None:
    fed = federation
    mtype = "catchup-" + secrets.token_hex(3)
    victim = fed.daemons[3]
    with op(fed, 0) as c:
        c.broadcast_to_all(mtype, "before", wait_s=5)
    wait_until(lambda: all_have(fed, mtype, 1), what="first message everywhere")
    victim.kill()  # SIGKILL
    with op(fed, 1) as c:
        for i in range(30):
            c.broadcast_to_all(mtype, f"while down {i}")
    wait_until(lambda: all_have(fed, mtype, 31, range(3)), what="live peers store 31")
    victim.start()
    victim.wait_ready()
    wait_until(
        lambda: len(messages_of(fed, 3, mtype)) >= 31,
        timeout_s=30,
        what="the restarted peer catches up",
    )
    got = messages_of(fed, 3, mtype)
    assert len(got) == 31 and len({m["envelope_id"] for m in got}) == 31
    with SupernodeClient(victim.url) as c:
        meta = {r["message_type"]: r for r in c.message_metadata()["by_type"]}
    assert meta[mtype]["total_messages"] == 31


def test_replayed_envelope_is_stored_once_everywhere(federation: LocalFederation) -> None:
    fed = federation
    mtype = "replay-" + secrets.token_hex(3)
    member1 = fed.identity(1)
    env = sn_message(fed, member1, mtype, "only once")
    first = push(fed, member1, 0, [env]).json()
    again = push(fed, member1, 0, [env]).json()
    other = push(fed, member1, 2, [env, env]).json()
    assert first["accepted"] == 1
    assert again == {"accepted": 0, "duplicates": 1, "rejected": [], "ignored": []}
    # daemon 2 may already hold it (anti-entropy from daemon 0): either way, one copy
    assert other["accepted"] + other["duplicates"] == 2 and other["accepted"] <= 1
    wait_until(lambda: all_have(fed, mtype, 1, range(3)), what="anti-entropy spreads it")
    import time

    time.sleep(1.5)  # a few anti-entropy rounds: each offers it again
    for i in range(4):
        assert len(messages_of(fed, i, mtype)) == 1


def test_forged_envelopes_are_refused_penalised_and_ban_survives_restart(
    federation: LocalFederation,
) -> None:
    fed = federation
    target = fed.daemons[0]
    rogue = fed.identity(4)  # a member: it can authenticate its pushes
    honest = fed.identity(2)
    mtype = "forged-" + secrets.token_hex(3)
    # 1. a message "from member 2" signed by member 4's key
    env = sn_message(fed, honest, mtype, "I am member 2, honest")
    env["signature"] = sn_message(fed, rogue, mtype, "I am member 2, honest")["signature"]
    r = push(fed, rogue, 0, [env])
    assert r.status_code == 200
    assert r.json()["rejected"] == [
        {"envelope_id": env["id"], "reason": "bad_signature", "detail": "signer is not the sender"}
    ]
    with SupernodeClient(target.url) as c:
        row = [p for p in c.supernodes()["supernodes"] if p["address"] == rogue.address][0]
        assert row["penalty_points"] == 10 and row["banned_until"] is None
        pens = c.http.get("/peer_penalties", params={"address": rogue.address}).json()
        assert pens["penalties"][0]["reason"] == "bad_signature"
    # 2. a tampered body and a high-s twin: penalised again, to the threshold (30)
    tampered = {
        **sn_message(fed, rogue, mtype, "original"),
        "payload": {"message_type": mtype, "message_body": "changed"},
    }
    good = sn_message(fed, rogue, mtype, "twin")
    sig = bytes.fromhex(good["signature"][2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    twin_s = (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
    twin = {**good, "signature": "0x" + (sig[:32] + twin_s + bytes([55 - sig[64]])).hex()}
    r = push(fed, rogue, 0, [tampered, twin])
    assert sorted(x["reason"] for x in r.json()["rejected"]) == ["high_s_signature", "id_mismatch"]
    # 3. banned: the next push is refused whole, with the reason
    r = push(fed, rogue, 0, [sn_message(fed, rogue, mtype, "let me in")])
    assert r.status_code == 403 and "banned" in r.json()["detail"]
    assert messages_of(fed, 0, mtype) == []
    # 4. the ban survives a restart
    target.stop()
    target.start()
    target.wait_ready()
    r = push(fed, rogue, 0, [sn_message(fed, rogue, mtype, "after restart")])
    assert r.status_code == 403 and "banned" in r.json()["detail"]
    with SupernodeClient(target.url) as c:
        row = [p for p in c.supernodes()["supernodes"] if p["address"] == rogue.address][0]
        assert row["banned_until"] is not None and row["penalty_points"] >= 30
    # other daemons did not ban it: bans are each peer's own judgement
    ok = push(fed, rogue, 1, [sn_message(fed, rogue, mtype, "to daemon 1")])
    assert ok.status_code == 200 and ok.json()["accepted"] == 1


def test_outsiders_and_bad_batches_refused_without_storing(federation: LocalFederation) -> None:
    fed = federation
    d = fed.daemons[1]
    mtype = "outsider-" + secrets.token_hex(3)
    stranger = Identity.generate()
    member3 = fed.identity(3)
    env = sn_message(fed, member3, mtype, "real")
    r = push(fed, stranger, 1, [env])
    assert r.status_code == 403 and "not a member" in r.json()["detail"]
    # a member's batch that lists other ids than it carries
    r = push(fed, member3, 1, [env], ids=["0x" + "00" * 32])
    assert r.status_code == 400 and "ids" in r.json()["detail"]
    # a batch signature that does not verify
    body = batch_body(
        member3,
        fed.network.network_id,
        fed.network.chain_id,  # type: ignore[union-attr]
        d.address,
        [env["id"]],
        [canonical_json(env)],
    ).replace(b'"signature":"0x', b'"signature":"0x00', 1)
    r = httpx.post(
        f"{d.url}/p2p/envelopes",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code in (400, 401)
    # a batch meant for another peer
    r = httpx.post(
        f"{d.url}/p2p/envelopes",
        content=batch_body(
            member3,
            fed.network.network_id,
            fed.network.chain_id,  # type: ignore[union-attr]
            fed.daemons[2].address,
            [env["id"]],
            [canonical_json(env)],
        ),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and "addressed" in r.json()["detail"]
    assert messages_of(fed, 1, mtype) == []


def test_bad_input_gets_4xx_with_reason_and_nothing_stored(federation: LocalFederation) -> None:
    fed = federation
    d = fed.daemons[2]
    auth = {"Authorization": f"Bearer {d.token}"}
    url = f"{d.url}/broadcast_message_to_all_sns"
    cases = [
        (
            dict(
                content=b'{"message_type": "x"',
                headers={**auth, "content-type": "application/json"},
            ),
            400,  # truncated JSON: refused at the edge, before the route
        ),
        (dict(json={"message_type": 5, "message_body": "x"}, headers=auth), 422),
        (dict(json={"message_type": "has space", "message_body": "x"}, headers=auth), 422),
        (dict(json={"message_type": "ok", "message_body": "x", "extra": 1}, headers=auth), 422),
        (dict(json={"message_type": "ok", "message_body": "x" * 20_000}, headers=auth), 400),
        (dict(content=b"x" * 5_000_000, headers={**auth, "content-type": "application/json"}), 413),
        (dict(json={"message_type": "ok", "message_body": "x"}), 401),
        (
            dict(
                json={"message_type": "ok", "message_body": "x"},
                headers={"Authorization": "Bearer " + "w" * 40},
            ),
            401,
        ),
    ]
    before = len(messages_of(fed, 2, "ok"))
    for kwargs, status in cases:
        r = httpx.post(url, timeout=10, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == status, (kwargs.get("json"), r.text)
        body = r.json()
        assert body.get("error") and body.get("detail"), body
    assert len(messages_of(fed, 2, "ok")) == before
    for path, status in [
        ("/get_sn_data_from_pastelid/0x1234", 400),
        ("/get_sn_data_from_pastelid/0x" + "ab" * 20, 404),
        ("/get_sn_data_from_sn_pubkey/0x1234", 400),
        ("/get_messages?last_k_minutes=-5", 422),
        ("/get_messages?last_k_minutes=abc", 422),
        ("/request_challenge/0x" + "ab" * 20 + "?endpoint=/nope", 400),
        ("/show_logs/abc", 422),
        ("/no_such_route", 404),
    ]:
        r = httpx.get(d.url + path, headers=auth, timeout=10)
        assert r.status_code == status, (path, r.text)
        assert "detail" in r.json()
    # the p2p routes: not JSON, wrong shape
    for content in (b"not json", b"[]", b'{"batch": 1, "envelopes": []}'):
        r = httpx.post(f"{d.url}/p2p/envelopes", content=content, timeout=10)
        assert 400 <= r.status_code < 500, r.text
        r = httpx.post(f"{d.url}/p2p/sync", content=content, timeout=10)
        assert 400 <= r.status_code < 500, r.text
        r = httpx.post(f"{d.url}/p2p/fetch", content=content, timeout=10)
        assert 400 <= r.status_code < 500, r.text

    # the hot routes (answered before FastAPI's routing) keep the body limit and the errors
    def chunks() -> Any:
        for _ in range(50):
            yield b"x" * 100_000

    for path in ("/p2p/envelopes", "/p2p/spend_votes", "/spend_credits"):
        for content in (b"x" * 5_000_000, chunks()):  # by Content-Length, then streamed
            r = httpx.post(f"{d.url}{path}", content=content, timeout=10)
            assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
        r = httpx.post(f"{d.url}{path}", content=b"{}", timeout=10)
        assert r.status_code == 400 and r.json()["detail"], r.text
        r = httpx.get(f"{d.url}{path}", timeout=10)
        assert r.status_code == 405, r.text


def test_member_without_collateral_is_ineligible_until_funded(
    federation: LocalFederation,
) -> None:
    fed = federation
    poor = fed.network.members[4].address  # type: ignore[union-attr]
    with SupernodeClient(fed.daemons[0].url) as c:
        listing = c.supernodes()
    rows = {r["address"]: r for r in listing["supernodes"]}
    assert rows[poor]["eligible"] is False and rows[poor]["collateral_wei"] == 0
    assert all(rows[d.address]["eligible"] for d in fed.daemons)
    assert listing["eligible"] == 4 and listing["quorum"] == 3
    # fund it and move to the next epoch: every daemon re-checks and counts it
    fed.anvil.send_eth(poor, 2 * fed.min_collateral_wei)  # type: ignore[union-attr]
    fed.anvil.mine(fed.epoch_blocks)  # type: ignore[union-attr]

    def all_see_it() -> bool:
        for d in fed.daemons:
            with SupernodeClient(d.url) as c:
                rows = {r["address"]: r for r in c.supernodes()["supernodes"]}
            if not rows[poor]["eligible"]:
                return False
        return True

    wait_until(all_see_it, timeout_s=20, what="every daemon sees the member eligible")
    with SupernodeClient(fed.daemons[1].url) as c:
        listing = c.supernodes()
    assert listing["eligible"] == 5 and listing["quorum"] == 4


def test_show_logs_is_operator_only(federation: LocalFederation) -> None:
    fed = federation
    d = fed.daemons[1]
    r = httpx.get(f"{d.url}/show_logs/5", timeout=10)
    assert r.status_code == 401
    r = httpx.get(
        f"{d.url}/show_logs/5", headers={"Authorization": "Bearer " + "x" * 43}, timeout=10
    )
    assert r.status_code == 401
    # a user who signs a challenge is still not the operator
    user = Identity.generate()
    with SupernodeClient(d.url, identity=user) as c:
        r = c.http.get("/show_logs/5", headers=c.auth_headers("/show_logs"))
    assert r.status_code == 403
    # the operator, by token ...
    with op(fed, 1) as c:
        lines = c.show_logs(5)
    assert any("ready at" in line for line in lines)
    # ... or by a challenge signed with the node key
    with SupernodeClient(d.url, identity=fed.identity(1)) as c:
        r = c.http.get("/show_logs/5", headers=c.auth_headers("/show_logs"))
    assert r.status_code == 200 and r.json()["count"] > 0


def test_log_stream_websocket_is_operator_only(federation: LocalFederation) -> None:
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    fed = federation
    d = fed.daemons[3]
    ws_url = d.url.replace("http://", "ws://") + "/logs/stream"
    marker = "stream-" + secrets.token_hex(4)

    async def run() -> str:
        with pytest.raises((ConnectionClosed, InvalidStatus)):  # refused at handshake
            async with connect(ws_url, open_timeout=5) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        async with connect(f"{ws_url}?token={d.token}", open_timeout=5) as ws:
            # something the daemon logs: an envelope it rejects (id names the marker)
            bad = {**sn_message(fed, fed.identity(1), marker, "x"), "type": "no_such_type"}
            await asyncio.to_thread(push, fed, fed.identity(1), 3, [bad])
            lines = []
            while not lines or "rejected" not in lines[-1]:
                lines.append(str(await asyncio.wait_for(ws.recv(), 10)))
            # the stream does not feed on itself (no logged frames of its own)
            assert not any("TEXT" in ln for ln in lines), lines[:5]
            return lines[-1]

    assert "rejected" in asyncio.run(run())


def test_health_ready_metrics(federation: LocalFederation) -> None:
    d = federation.daemons[0]
    with op(federation, 0) as c:
        c.broadcast_to_all("metrics-probe", "count me")
    assert httpx.get(f"{d.url}/health", timeout=5).json()["status"] == "ok"
    ready = httpx.get(f"{d.url}/ready", timeout=5).json()
    assert ready["ready"] is True and ready["checks"]["chain"] is True
    text = httpx.get(f"{d.url}/metrics", timeout=5).text
    assert 'supernode_envelopes_total{reason="",verdict="accepted"}' in text
    assert "supernode_eligible_members" in text
    assert httpx.get(f"{d.url}/", timeout=5).status_code == 200
    assert httpx.get(f"{d.url}/openapi.json", timeout=5).json()["paths"]["/send_user_message"]
    csv_text = httpx.get(f"{d.url}/supernode_list_csv", timeout=5).text
    assert csv_text.splitlines()[0].startswith("address,url,public_key,eligible")
    assert len(csv_text.strip().splitlines()) == 1 + 5
