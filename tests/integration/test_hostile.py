"""An outsider tries to crash, starve or lock the federation through its public endpoints
(real daemons on 127.0.0.1; the attacker connects from 127.0.0.2, an address that is no
member's). After every attack: every daemon alive, /health answering, a spend still
certifying, nothing stored for refused input, and no traceback in the logs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from supernode.client import OrderPending, SupernodeAPIError, SupernodeClient
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS, buy_pack, pack_state, wait_until

pytestmark = pytest.mark.integration
ATTACKER = "127.0.0.2"  # loopback, but not the members' address
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_QUORUM_TIMEOUT_S": "2",
    "SUPERNODE_HTTP_HEADER_TIMEOUT_S": "2",
    "SUPERNODE_HTTP_IDLE_TIMEOUT_S": "5",
    "SUPERNODE_CLOCK_SKEW_S": "2",
}
SKEW_S = 2
DEEP = 100_000


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("hostile"), peers=4, settings=dict(SETTINGS)
    ) as f:
        yield f


def log_mark(fed: LocalFederation) -> list[int]:
    return [d.log_path.stat().st_size for d in fed.daemons]


def assert_unharmed(fed: LocalFederation, since: list[int]) -> None:
    """Every daemon alive and answering, and nothing went wrong in its logs since."""
    for d, offset in zip(fed.daemons, since, strict=True):
        assert d.running, f"daemon {d.index} died; see {d.log_path}"
        assert httpx.get(f"{d.url}/health", timeout=5).status_code == 200
        with d.log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        assert "Traceback" not in text and "| ERROR" not in text, text[-3000:]


def spend_once(fed: LocalFederation, pack: tuple[Identity, str], at: int = 0) -> dict[str, Any]:
    owner, pack_id = pack
    with SupernodeClient(fed.daemons[at].url, identity=owner, retry_s=0) as c:
        return c.spend(pack_id, 1)


@pytest.fixture(scope="module")
def pack(fed: LocalFederation) -> tuple[Identity, str]:
    return buy_pack(fed, 100_000)


def openapi_routes(fed: LocalFederation) -> list[tuple[str, str, dict[str, Any]]]:
    doc = httpx.get(f"{fed.daemons[0].url}/openapi.json", timeout=10).json()
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def concrete(path: str) -> str:
    """A path of the OpenAPI document with its parameters filled in plausibly."""
    out = path
    for name, value in {
        "{address}": "0x" + "ab" * 20,
        "{pubkey}": "0x04" + "ab" * 64,
        "{minutes}": "5",
    }.items():
        out = out.replace(name, value)
    while "{" in out:
        start, end = out.index("{"), out.index("}")
        out = out[:start] + "0x" + "cd" * 32 + out[end + 1 :]
    return out


def post_raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        url,
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def test_deep_nesting_on_every_route_is_a_400_and_kills_nothing(
    fed: LocalFederation, pack: tuple[Identity, str]
) -> None:
    mark = log_mark(fed)
    d = fed.daemons[1]
    bodies = {
        "arrays": b"[" * DEEP + b"]" * DEEP,
        "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        "unclosed": b"[" * DEEP,
    }
    posts = [path for method, path, _ in openapi_routes(fed) if method == "POST"]
    assert {"/spend_credits", "/p2p/envelopes", "/p2p/spend_votes", "/send_message"} <= set(posts)
    for path in posts:
        for kind, body in bodies.items():
            r = post_raw(d.url + concrete(path), body)  # no token, no signature
            assert r.status_code == 400, (path, kind, r.status_code, r.text[:300])
            text = json.dumps(r.json())
            assert "nested deeper" in text or "not valid JSON" in text, (path, text)
    assert spend_once(fed, pack, at=1)["votes"]
    assert_unharmed(fed, mark)


# What a hostile client sends, by shape: each body goes to every POST route.
CORPUS: dict[str, bytes] = {
    "deep_arrays": b"[" * 5000 + b"]" * 5000,
    "deep_objects": b'{"a":' * 5000 + b"0" + b"}" * 5000,
    "int_2^63": json.dumps({"sequence": 2**63, "after": 2**63, "limit": 2**63}).encode(),
    "int_2^64": json.dumps({"x": [2**64, -(2**63) - 1]}).encode(),
    "int_2^256": json.dumps({"amount": 2**256 + 1}).encode(),
    "int_4000_digits": b'{"credits": ' + b"7" * 4000 + b"}",
    "lone_surrogate": b'{"message_type": "x", "message_body": "\\ud800", "to_address": "x"}',
    "utf8_surrogate": b'{"message_body": "\xed\xa0\x80"}',
    "invalid_utf8": b'{"message_body": "\xff\xfe"}',
    "nul_bytes": b'{"message_body": "a\\u0000b", "model": "\\u0000"}',
    "raw_nul": b'{"a": "\x00"}',
    "huge_string": b'{"message_body": "' + b"x" * 3_000_000 + b'"}',
    "wrong_type_list": b"[]",
    "wrong_type_string": b'"an envelope"',
    "wrong_type_number": b"12",
    "null": b"null",
    "empty_object": b"{}",
    "empty": b"",
    "truncated": b'{"type": "spend_order", "payload": {"pack_id": "0x',
    "nan": b'{"temperature": NaN}',
    "float_overflow": b'{"temperature": 1e999}',
    "trailing_garbage": b"{} {}",
}


def chunked_over_limit() -> Iterator[bytes]:
    for _ in range(50):
        yield b"[" * 100_000  # 5 MB, over the 4 MB limit, with no Content-Length


def test_bad_input_corpus_on_every_route_gets_4xx_and_stores_nothing(
    fed: LocalFederation, pack: tuple[Identity, str]
) -> None:
    mark = log_mark(fed)
    d = fed.daemons[2]
    before = httpx.get(f"{d.url}/get_message_metadata", timeout=10).json()
    auth = {"Authorization": f"Bearer {d.token}"}
    routes = openapi_routes(fed)
    for method, path, _ in routes:
        url = d.url + concrete(path)
        if method == "POST":
            for name, body in CORPUS.items():
                for headers in ({}, auth):  # anonymous, and as the operator
                    r = post_raw(url, body, headers)
                    assert 400 <= r.status_code < 500, (path, name, r.status_code, r.text[:300])
                    assert r.json(), (path, name)
            r = httpx.post(url, content=chunked_over_limit(), headers=auth, timeout=30)
            assert r.status_code == 413, (path, r.status_code, r.text[:200])
        elif method == "GET" and "{" not in path or path.startswith("/get_credit_pack_spends"):
            for query in (
                f"from_sequence={2**63}&limit={2**70}",
                f"last_k_minutes={2**64}&limit=-1",
                "endpoint=%ED%A0%80&message_type=%ED%A0%80&address=%00",  # a lone surrogate
                "pack_id=0x" + "ab" * 32 + "&from_sequence=1e999",
            ):
                r = httpx.get(f"{url}?{query}", headers=auth, timeout=30)
                assert r.status_code < 500, (path, query, r.status_code, r.text[:300])
    # the integer bounds name the field
    r = httpx.get(
        f"{d.url}/p2p/spend_certificates",
        params={"pack_id": "0x" + "ab" * 32, "from_sequence": 2**63},
        timeout=10,
    )
    assert r.status_code == 422 and "from_sequence" in r.text
    owner, pack_id = pack
    net = fed.network
    assert net is not None
    huge = sign_envelope(
        Identity.generate(),  # any key, no pack: refused on its shape before anything else
        type_="spend_order",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={
            "pack_id": pack_id,
            "sequence": 2**63,
            "amount": 1,
            "request_id": "0x" + "00" * 32,
            "executor": d.address,
        },
    )
    r = post_raw(f"{d.url}/spend_credits", huge.model_dump_json().encode())
    assert r.status_code == 400 and "sequence" in r.json()["detail"], r.text
    assert httpx.get(f"{d.url}/get_message_metadata", timeout=10).json() == before
    assert spend_once(fed, pack, at=2)["votes"]
    assert_unharmed(fed, mark)


# -- hostile connections ------------------------------------------------------------------
async def hold_connections(
    port: int, count: int, seconds: float, stats: dict[str, int], partial: bool
) -> None:
    """Open ``count`` connections from ATTACKER to ``port`` and hold them for ``seconds``,
    each sending part of a request (``partial``) or nothing, then silence; every second,
    up to 200 of those the daemon closed are opened again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    held: list[socket.socket] = []

    async def one() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((ATTACKER, 0))
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 2)
            if partial:
                await loop.sock_sendall(s, b"POST /p2p/spend_votes HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
            stats["opened"] += 1
        except (OSError, TimeoutError):
            s.close()
            stats["failed"] += 1

    async def open_many(n: int) -> None:
        for start in range(0, n, 250):
            await asyncio.gather(*(one() for _ in range(min(250, n - start))))

    def prune() -> None:
        alive = []
        for s in held:
            try:
                gone = s.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                s.close()
                stats["closed_by_daemon"] += 1
            else:
                alive.append(s)
        held[:] = alive

    await open_many(count)
    while loop.time() < deadline:
        await asyncio.sleep(1.0)
        prune()
        await open_many(min(200, count - len(held)))
    for s in held:
        s.close()


def test_idle_and_slow_connections_at_two_voters_do_not_starve_the_quorum(
    fed: LocalFederation, pack: tuple[Identity, str]
) -> None:
    mark = log_mark(fed)
    voters = fed.daemons[1:3]
    keys = ("opened", "failed", "closed_by_daemon")
    stats = {d.index: dict.fromkeys(keys, 0) for d in voters}
    latencies: list[float] = []
    errors: list[str] = []
    flood_s, spend_s = 14.0, 8.0

    async def attack_and_spend() -> None:
        flood = [
            asyncio.create_task(hold_connections(d.port, 2500, flood_s, stats[d.index], i == 0))
            for i, d in enumerate(voters)
        ]
        await asyncio.sleep(4.0)  # the flood is in place
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spend_s
        while loop.time() < deadline:
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(spend_once, fed, pack)
                latencies.append(time.perf_counter() - t0)
            except SupernodeAPIError as exc:
                errors.append(str(exc))
            for d in voters:  # the flooded daemons still answer their members' users
                r = await asyncio.to_thread(httpx.get, f"{d.url}/health", timeout=5)
                assert r.status_code == 200
        await asyncio.gather(*flood)

    asyncio.run(attack_and_spend())
    assert not errors, errors[:3]
    assert len(latencies) >= 5, latencies
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(  # noqa: T201 - the figures the issue asks to report
        f"\nflood of 2 x 2500 connections: {len(latencies)} spends in {spend_s:.0f} s "
        f"({len(latencies) / spend_s:.1f}/s, one at a time), p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms; attacker {stats}"
    )
    for d in voters:
        assert stats[d.index]["opened"] + stats[d.index]["failed"] >= 2500, stats
        m = metrics(d)
        assert m["supernode_connections_refused_total"] >= 2000, m
        assert m["supernode_connections_timed_out_total"] >= 50, m  # the admitted ones, cut
        assert m['supernode_connections_open{client="outsider"}'] <= 64, m
    assert_unharmed(fed, mark)


def metrics(d: Any) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{d.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("supernode_connections"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_slow_header_is_cut_off_by_the_header_timeout(fed: LocalFederation) -> None:
    d = fed.daemons[3]
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10, source_address=(ATTACKER, 0))
    t0 = time.monotonic()
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(20):  # then a byte every half second, for ever (slowloris)
            s.sendall(b"a")
            time.sleep(0.5)
            if time.monotonic() - t0 > 8:
                break
    except OSError:
        pass  # the daemon closed it
    s.settimeout(5)
    try:
        assert s.recv(100) == b""  # closed, without a response
    except ConnectionResetError:
        pass
    assert time.monotonic() - t0 < 8, "not cut off within the header timeout (2 s) + slack"
    s.close()


def test_a_challenge_flood_neither_blocks_an_honest_login_nor_grows_memory(
    fed: LocalFederation,
) -> None:
    mark = log_mark(fed)
    d = fed.daemons[0]
    rss_before = rss_kb(d.proc.pid)  # type: ignore[union-attr]
    counts = {"200": 0, "429": 0, "other": 0}
    retry_after: set[str] = set()
    honest_ok: list[bool] = []

    async def flood(total: int, seconds: float) -> None:
        conn = aiohttp.TCPConnector(local_addr=(ATTACKER, 0), limit=64)
        async with aiohttp.ClientSession(connector=conn) as session:
            deadline = time.monotonic() + seconds
            sent = 0

            async def one(i: int) -> None:
                address = "0x" + f"{i:040x}"
                async with session.get(
                    f"{d.url}/request_challenge/{address}",
                    params={"endpoint": "/send_user_message"},
                ) as r:
                    await r.read()
                    key = str(r.status) if r.status in (200, 429) else "other"
                    counts[key] += 1
                    if r.status == 429:
                        retry_after.add(r.headers.get("Retry-After", ""))

            while sent < total and time.monotonic() < deadline:
                await asyncio.gather(*(one(sent + i) for i in range(200)))
                sent += 200

    def honest() -> None:
        user = Identity.generate()
        transport = httpx.HTTPTransport(local_address="127.0.0.3")  # a third address
        with SupernodeClient(d.url, identity=user) as c:
            c.http = httpx.Client(base_url=d.url, transport=transport, timeout=30)
            out = c.send_user_message(fed.daemons[1].address, "hello in a flood")
            honest_ok.append(bool(out))

    async def both() -> None:
        f = asyncio.create_task(flood(100_000, 20.0))
        await asyncio.sleep(3.0)
        await asyncio.to_thread(honest)
        await f

    asyncio.run(both())
    assert honest_ok == [True]
    assert counts["other"] == 0, counts
    assert counts["429"] > counts["200"] > 0, counts  # the flood was cut to its share
    assert retry_after and all(v.isdigit() for v in retry_after)
    grown_mb = (rss_kb(d.proc.pid) - rss_before) / 1024  # type: ignore[union-attr]
    print(f"\nchallenge flood: {counts}; daemon memory grew {grown_mb:.1f} MB")  # noqa: T201
    assert grown_mb < 40, grown_mb
    assert_unharmed(fed, mark)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_quotes_need_funds_and_a_flood_of_them_is_rate_limited(fed: LocalFederation) -> None:
    d = fed.daemons[3]
    net = fed.network
    assert net is not None
    broke = Identity.generate()
    transport = httpx.HTTPTransport(local_address="127.0.0.4")
    statuses: dict[int, int] = {}
    purchase_ids = []
    with httpx.Client(transport=transport, timeout=30) as http:
        for i in range(100):
            req = sign_envelope(
                broke,
                type_="credit_purchase_request",
                network_id=net.network_id,
                chain_id=net.chain_id,
                payload={"credits": 10, "nonce": f"spam-{i}"},
            )
            r = http.post(
                f"{d.url}/credit_purchase_initial_request",
                content=req.model_dump_json(),
                headers={"content-type": "application/json"},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 422:
                assert r.json()["reason"] == "insufficient_funds", r.text
            elif r.status_code == 429:
                assert r.headers["Retry-After"].isdigit()
            purchase_ids.append("0x" + req.id[2:])
    assert set(statuses) <= {422, 429} and statuses.get(429, 0) > 0, statuses
    for member in fed.daemons:  # nothing was stored anywhere
        with SupernodeClient(member.url) as c:
            quoted = [1 for pid in purchase_ids[:5] if _known_purchase(c, pid)]
        assert not quoted


def _known_purchase(c: SupernodeClient, request_id: str) -> bool:
    from supernode.credits.terms import purchase_id_for

    try:
        c.purchase_status(purchase_id_for(request_id))
    except SupernodeAPIError as exc:
        assert exc.status == 404
        return False
    return True


# -- a retry never locks a pack -----------------------------------------------------------
def test_no_quorum_then_the_sdk_resends_the_same_order_and_the_pack_is_not_locked(
    fed: LocalFederation, tmp_path: Path
) -> None:
    owner, pack_id = buy_pack(fed, 50)
    stopped = fed.daemons[2:]
    orders_file = tmp_path / "orders.json"
    with SupernodeClient(
        fed.daemons[0].url,
        identity=owner,
        fallback_urls=[fed.daemons[1].url],
        retry_s=1.0,
        orders_file=orders_file,
    ) as c:
        for d in stopped:
            d.suspend()
        try:
            with pytest.raises(OrderPending) as info:
                c.spend(pack_id, 7)
            kept = info.value.order
            assert list(json.loads(orders_file.read_text())) == [kept["id"]]
            # the next spend of this pack resends the kept order first: still no quorum,
            # and no second order is signed for its sequence
            with pytest.raises(OrderPending) as again:
                c.spend(pack_id, 3)
            assert again.value.order["id"] == kept["id"]
        finally:
            for d in stopped:
                d.resume()
        c.retry_s = 30.0
        done = c.resend_pending()
        assert done == [{"order_id": kept["id"], "status": "certified"}], done
        assert json.loads(orders_file.read_text()) == {}
        cert = c.spend(pack_id, 3)  # and the pack goes on
    assert cert["order"]["payload"]["sequence"] == 1
    wait_until(
        lambda: all(pack_state(fed, i, pack_id) == _state(owner, pack_id, 40, 2) for i in range(4)),
        what="every daemon applied both spends",
    )
    certs = httpx.get(f"{fed.daemons[3].url}/get_credit_pack_spends/{pack_id}", timeout=5).json()
    assert certs["certificates"][0]["order"]["id"] == kept["id"]


def _state(owner: Identity, pack_id: str, remaining: int, seq: int) -> dict[str, Any]:
    return {
        "pack_id": pack_id,
        "buyer": owner.address,
        "credits": 50,
        "remaining_credits": remaining,
        "next_sequence": seq,
    }


def _order(fed: LocalFederation, owner: Identity, pack_id: str, ttl_s: int) -> dict[str, Any]:
    net = fed.network
    assert net is not None
    return sign_envelope(
        owner,
        type_="spend_order",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={
            "pack_id": pack_id,
            "sequence": 0,
            "amount": 5,
            "request_id": "0x" + secrets.token_hex(32),
            "executor": fed.daemons[0].address,
        },
        ttl_s=ttl_s,
    ).to_wire()


def test_an_order_that_expired_mid_outage_still_completes_from_the_votes_given_in_time(
    fed: LocalFederation,
) -> None:
    owner, pack_id = buy_pack(fed, 50)
    o = _order(fed, owner, pack_id, ttl_s=4)
    stopped = fed.daemons[2:]
    with SupernodeClient(fed.daemons[0].url, identity=owner, retry_s=0.5) as c:
        for d in stopped:
            d.suspend()
        try:
            with pytest.raises(OrderPending):
                c.submit_order(o)  # daemons 0 and 1 vote: 2 of the 3 needed
            time.sleep(4 + SKEW_S + 1)
        finally:
            for d in stopped:
                d.resume()
        # expired now; daemons 2 and 3 never voted: shown the others' votes, they vote too
        assert c.resend_pending()[0]["status"] == "certified"
        assert c.spend(pack_id, 5)["order"]["payload"]["sequence"] == 1
    assert all((pack_state(fed, i, pack_id) or {}).get("next_sequence") in (1, 2) for i in range(4))


def test_an_expired_order_nobody_voted_for_is_refused_for_good_and_a_new_one_is_signed(
    fed: LocalFederation,
) -> None:
    owner, pack_id = buy_pack(fed, 50)
    o = _order(fed, owner, pack_id, ttl_s=1)
    time.sleep(1 + SKEW_S + 1)  # past expiry and the clock-skew allowance
    with SupernodeClient(fed.daemons[0].url, identity=owner, retry_s=5) as c:
        c.pending.add(o, "/spend_credits", c.base_url)  # as if kept from an earlier run
        cert = c.spend(pack_id, 4)  # resends the dead order first: 422 order_expired
        assert cert["order"]["id"] != o["id"]
        assert cert["order"]["payload"]["sequence"] == 0
        assert c.pending.all() == []


def test_ready_says_503_without_a_quorum_and_200_again_after(fed: LocalFederation) -> None:
    d = fed.daemons[0]
    assert httpx.get(f"{d.url}/ready", timeout=5).status_code == 200
    for x in fed.daemons[2:]:
        x.suspend()
    try:
        t0 = time.monotonic()

        def unready() -> dict[str, Any] | None:
            r = httpx.get(f"{d.url}/ready", timeout=5)
            return r.json() if r.status_code == 503 else None

        body = wait_until(unready, timeout_s=30, what="/ready 503 without a quorum")
        assert body["reasons"] == ["quorum_unreachable"], body
        print(f"\n/ready went 503 {time.monotonic() - t0:.1f} s after the quorum was lost")  # noqa: T201
    finally:
        for x in fed.daemons[2:]:
            x.resume()
    wait_until(
        lambda: httpx.get(f"{d.url}/ready", timeout=5).status_code == 200,
        timeout_s=30,
        what="/ready 200 again",
    )


def test_open_files_limit_is_raised_for_the_daemon(fed: LocalFederation) -> None:
    pid = fed.daemons[0].proc.pid  # type: ignore[union-attr]
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    assert os.getpid() != pid


def test_anonymous_bursts_of_challenges_and_reads_are_limited(fed: LocalFederation) -> None:
    """60 challenge requests and 300 reads in a burst from one outsider address: the
    burst's share passes, the rest get 429 with Retry-After; another address, a member
    and /health are not affected."""
    d = fed.daemons[2]
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    who = Identity.generate().address
    with httpx.Client(transport=transport, timeout=30) as http:
        codes = [
            http.get(f"{d.url}/request_challenge/{who}", params={"endpoint": "/get_user_messages"})
            for _ in range(60)
        ]
        ok = sum(r.status_code == 200 for r in codes)
        limited = [r for r in codes if r.status_code == 429]
        assert 10 <= ok <= 30 and len(limited) == 60 - ok, [r.status_code for r in codes]
        assert all(r.headers["Retry-After"].isdigit() for r in limited)
    # (those were reads too: another address for the reads' own burst)
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.7"), timeout=30) as http:
        reads = [http.get(f"{d.url}/get_inference_model_menu").status_code for _ in range(300)]
        assert 50 <= reads.count(200) <= 150 and reads.count(429) == 300 - reads.count(200)
        r = http.get(f"{d.url}/v1/models")  # OpenAI's shape under /v1
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert http.get(f"{d.url}/health").status_code in (200, 503)  # monitors: never limited
    other = httpx.HTTPTransport(local_address="127.0.0.6")
    with httpx.Client(transport=other, timeout=30) as http:
        assert http.get(f"{d.url}/get_inference_model_menu").status_code == 200
    assert httpx.get(f"{d.url}/get_inference_model_menu", timeout=10).status_code == 200
