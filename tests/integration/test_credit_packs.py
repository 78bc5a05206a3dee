"""Credit packs on anvil with four real daemons: certified purchases, every refusal with
its reason, confirmations, crashes, races, dissent, and forged signatures."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient, rpc_call, send_payment
from supernode.crypto.attest import attest
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import ETH, LocalFederation
from supernode.federation.transport import batch_body
from tests.conftest import TEST_SETTINGS, wait_until

pytestmark = pytest.mark.integration

SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_PENDING_PURCHASE_INTERVAL_S": "0.5",
    "SUPERNODE_QUORUM_TIMEOUT_S": "3",
    "SUPERNODE_QUOTE_TTL_BLOCKS": "100",
}
# A reverting contract: runtime 0x60006000fd (REVERT(0, 0)), deployed by init code that
# returns those 5 bytes.
REVERTER_INIT = "0x6460006000fd6000526005601bf3"


def start(root: Path, **kw: Any) -> LocalFederation:
    fed = LocalFederation(root=root, peers=4, settings=dict(SETTINGS), **kw)
    try:
        fed.start()
    except BaseException:
        fed.stop()
        raise
    return fed


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    f = start(tmp_path_factory.mktemp("credits"))
    try:
        yield f
    finally:
        f.stop()


def buyer(fed: LocalFederation) -> Identity:
    ident = Identity.generate()
    fed.anvil.send_eth(ident.address, 100 * ETH)  # type: ignore[union-attr]
    return ident


def client(fed: LocalFederation, i: int, ident: Identity | None = None) -> SupernodeClient:
    return SupernodeClient(fed.daemons[i].url, identity=ident)


def refusal(
    fed: LocalFederation, i: int, purchase_id: str, tx: str, quote: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    with client(fed, i) as c:
        with pytest.raises(SupernodeAPIError) as err:
            c.confirm_purchase(purchase_id, tx, quote)
    return err.value.status, err.value.body


def balances(fed: LocalFederation, pack_id: str) -> list[Any]:
    out = []
    for d in fed.daemons:
        with SupernodeClient(d.url) as c:
            try:
                out.append(c.pack_balance(pack_id)["remaining_credits"])
            except SupernodeAPIError as exc:
                out.append(exc.status)
    return out


def test_happy_path_every_peer_reports_the_same_pack(fed: LocalFederation) -> None:
    alice = buyer(fed)
    with client(fed, 0, alice) as c:
        pack = c.buy_credits(500, fed.anvil.url)  # type: ignore[union-attr]
    assert pack["credits"] == 500 and pack["remaining_credits"] == 500
    assert pack["amount_wei"] == 500 * fed.network.credit_price_wei  # type: ignore[union-attr]
    assert len(pack["certificate"]["signatures"]) >= 3
    wait_until(lambda: balances(fed, pack["pack_id"]) == [500] * 4, what="all peers hold it")
    for i in range(4):
        with client(fed, i) as c:
            assert c.purchase_status(pack["pack_id"])["status"] == "certified"
            assert [p["pack_id"] for p in c.packs(alice.address)] == [pack["pack_id"]]
            assert c.pack_from_tx(pack["tx_hash"])["pack_id"] == pack["pack_id"]
    # confirming again anywhere is idempotent
    with client(fed, 2) as c:
        again = c.confirm_purchase(pack["pack_id"], pack["tx_hash"])
    assert again["status"] == "certified" and again["pack"]["pack_id"] == pack["pack_id"]


def quote_for(fed: LocalFederation, ident: Identity, credits: int = 10, at: int = 0) -> dict:
    with client(fed, at, ident) as c:
        return c.request_quote(credits)


def test_each_payment_check_refuses_with_its_reason(fed: LocalFederation) -> None:
    rpc = fed.anvil.url  # type: ignore[union-attr]
    bob, mallory = buyer(fed), buyer(fed)

    def case(pay: Any, reason: str) -> None:
        q = quote_for(fed, bob)
        t = q["terms"]
        tx = pay(t)
        status, body = refusal(fed, 1, t["purchase_id"], tx, q)
        assert (status, body.get("reason")) == (422, reason), body
        with client(fed, 1) as c:
            st = c.purchase_status(t["purchase_id"])
        assert st["status"] == "refused" and st["detail"].startswith(reason)

    stranger = Identity.generate().address
    case(
        lambda t: send_payment(
            rpc, bob, to=stranger, value_wei=t["amount_wei"], data=t["purchase_id"]
        ),
        "wrong_to",
    )
    case(
        lambda t: send_payment(
            rpc, mallory, to=t["payment_address"], value_wei=t["amount_wei"], data=t["purchase_id"]
        ),
        "wrong_from",
    )
    case(
        lambda t: send_payment(
            rpc, bob, to=t["payment_address"], value_wei=t["amount_wei"] - 1, data=t["purchase_id"]
        ),
        "value_too_low",
    )
    case(
        lambda t: send_payment(
            rpc, bob, to=t["payment_address"], value_wei=t["amount_wei"], data="0x" + "00" * 32
        ),
        "wrong_input",
    )
    # a transaction that reverts
    deploy = send_payment(rpc, bob, to=None, value_wei=0, data=REVERTER_INIT, gas=100_000)
    reverter = rpc_call(rpc, "eth_getTransactionReceipt", [deploy])["contractAddress"]
    case(
        lambda t: send_payment(
            rpc, bob, to=reverter, value_wei=t["amount_wei"], data=t["purchase_id"], gas=100_000
        ),
        "tx_reverted",
    )
    # a hash the chain never saw
    case(lambda t: "0x" + secrets.token_hex(32), "tx_not_found")
    # an expired quote: the payment lands after the expiry block
    q = quote_for(fed, bob)
    fed.anvil.mine(101)  # type: ignore[union-attr]
    tx = send_payment(
        rpc,
        bob,
        to=q["terms"]["payment_address"],
        value_wei=q["terms"]["amount_wei"],
        data=q["terms"]["purchase_id"],
    )
    status, body = refusal(fed, 2, q["terms"]["purchase_id"], tx, q)
    assert (status, body["reason"]) == (422, "quote_expired")
    # a transaction already used for another pack
    with client(fed, 0, bob) as c:
        first = c.buy_credits(7, rpc)
    q2 = quote_for(fed, bob)
    status, body = refusal(fed, 3, q2["terms"]["purchase_id"], first["tx_hash"], q2)
    assert (status, body["reason"]) == (422, "tx_already_used")
    # no credits came of any of it
    for i in range(4):
        with client(fed, i) as c:
            assert [p["pack_id"] for p in c.packs(bob.address)] == [first["pack_id"]]


def test_bad_requests_get_4xx_with_reasons(fed: LocalFederation) -> None:
    d = fed.daemons[0]
    bob = Identity.generate()
    net = fed.network
    assert net is not None

    def request(**kw: Any) -> httpx.Response:
        args: dict[str, Any] = {
            "type_": "credit_purchase_request",
            "network_id": net.network_id,
            "chain_id": net.chain_id,
            "payload": {"credits": 5},
        }
        args.update(kw)
        env = sign_envelope(bob, **args)
        return httpx.post(
            f"{d.url}/credit_purchase_initial_request", content=env.model_dump_json(), timeout=10
        )

    r = request(payload={"credits": 0})
    assert r.status_code == 422 and r.json()["reason"] == "bad_credits"
    r = request(payload={"credits": "5"})
    assert r.status_code == 400
    r = request(network_id="another-network")
    assert r.status_code == 422 and r.json()["reason"] == "wrong_network"
    r = request(type_="sn_message")
    assert r.status_code == 400
    r = httpx.post(f"{d.url}/credit_purchase_initial_request", content=b"{", timeout=10)
    assert r.status_code == 400
    for body, status in [
        ({"purchase_id": "0x12", "tx_hash": "0x" + "ab" * 32}, 422),
        ({"purchase_id": "0x" + "ab" * 32, "tx_hash": "nope"}, 422),
        ({"purchase_id": "0x" + "ab" * 32, "tx_hash": "0x" + "cd" * 32}, 404),
    ]:
        r = httpx.post(f"{d.url}/confirm_credit_purchase_request", json=body, timeout=10)
        assert r.status_code == status, r.text
        assert r.json()["detail"]
    assert httpx.get(f"{d.url}/check_credit_pack_balance/0x12", timeout=5).status_code == 400
    assert (
        httpx.get(f"{d.url}/check_credit_pack_balance/0x" + "ab" * 32, timeout=5).status_code == 404
    )


def test_selling_peer_killed_after_payment_another_certifies(fed: LocalFederation) -> None:
    carol = buyer(fed)
    q = quote_for(fed, carol, 42, at=3)
    t = q["terms"]
    tx = send_payment(
        fed.anvil.url,
        carol,
        to=t["payment_address"],  # type: ignore[union-attr]
        value_wei=t["amount_wei"],
        data=t["purchase_id"],
    )
    fed.daemons[3].kill()
    try:
        with client(fed, 1) as c:
            result = c.confirm_purchase(t["purchase_id"], tx, q)
        assert result["status"] == "certified" and result["pack"]["credits"] == 42
    finally:
        fed.daemons[3].start()
        fed.daemons[3].wait_ready()
    wait_until(
        lambda: balances(fed, t["purchase_id"]) == [42] * 4,
        timeout_s=30,
        what="the restarted seller learns the pack by anti-entropy",
    )


def test_twenty_concurrent_confirms_give_one_pack(fed: LocalFederation) -> None:
    dave = buyer(fed)
    q = quote_for(fed, dave, 77)
    t = q["terms"]
    tx = send_payment(
        fed.anvil.url,
        dave,
        to=t["payment_address"],  # type: ignore[union-attr]
        value_wei=t["amount_wei"],
        data=t["purchase_id"],
    )
    results: list[Any] = []

    def confirm(i: int) -> None:
        with client(fed, i % 4) as c:
            try:
                results.append(c.confirm_purchase(t["purchase_id"], tx, q))
            except SupernodeAPIError as exc:
                results.append(exc)

    threads = [threading.Thread(target=confirm, args=(i,)) for i in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    certified = [r for r in results if isinstance(r, dict) and r["status"] == "certified"]
    assert len(results) == 20 and certified, results
    assert {r["pack"]["pack_id"] for r in certified} == {t["purchase_id"]}
    wait_until(lambda: balances(fed, t["purchase_id"]) == [77] * 4, what="one pack everywhere")
    for i in range(4):
        with client(fed, i) as c:
            packs = c.packs(dave.address)
        assert len(packs) == 1 and packs[0]["tx_hash"] == tx


def test_two_of_four_down_fails_clearly_then_succeeds(fed: LocalFederation) -> None:
    erin = buyer(fed)
    q = quote_for(fed, erin, 9)
    t = q["terms"]
    tx = send_payment(
        fed.anvil.url,
        erin,
        to=t["payment_address"],  # type: ignore[union-attr]
        value_wei=t["amount_wei"],
        data=t["purchase_id"],
    )
    fed.daemons[2].kill()
    fed.daemons[3].kill()
    try:
        status, body = refusal(fed, 0, t["purchase_id"], tx, q)
        assert status == 503 and body["reason"] == "awaiting_quorum"
        assert "2 of the 3" in body["detail"]
        with client(fed, 0) as c:
            assert c.purchase_status(t["purchase_id"])["status"] == "pending"
    finally:
        for d in fed.daemons[2:]:
            d.start()
        for d in fed.daemons[2:]:
            d.wait_ready()

    def certified_at_0() -> bool:
        with client(fed, 0) as c:
            return c.purchase_status(t["purchase_id"])["status"] == "certified"

    # nobody retries: the pending-purchases job finishes it once the peers are back
    wait_until(certified_at_0, timeout_s=30, what="the job certifies it")
    wait_until(
        lambda: balances(fed, t["purchase_id"]) == [9] * 4, timeout_s=30, what="every peer holds it"
    )


def test_signatures_from_non_members_are_refused(fed: LocalFederation) -> None:
    net = fed.network
    assert net is not None
    frank = buyer(fed)
    real = quote_for(fed, frank, 5)
    outsiders = [Identity.generate() for _ in range(3)]

    def sigs(kind: str, terms: dict[str, Any], who: list[Identity]) -> list[dict[str, str]]:
        return [
            attest(i, kind, terms, chain_id=net.chain_id, network_id=net.network_id) for i in who
        ]

    # a quote whose agreements come from outsiders, for a new purchase id
    terms = {**real["terms"], "purchase_id": "0x" + secrets.token_hex(32)}
    forged_quote = {"terms": terms, "agreements": sigs("credit_pack_quote", terms, outsiders)}
    status, body = refusal(fed, 1, terms["purchase_id"], "0x" + "11" * 32, forged_quote)
    assert status == 422 and body["reason"] == "not_eligible"
    # a certificate pushed by a member: outsiders' signatures, then too few members'
    pack_terms = {
        "pack_id": terms["purchase_id"],
        "purchase_id": terms["purchase_id"],
        "buyer": frank.address,
        "credits": 10**6,
        "amount_wei": 1,
        "tx_hash": "0x" + "22" * 32,
        "block_number": 1,
        "network_id": net.network_id,
        "chain_id": net.chain_id,
    }
    members2 = [fed.identity(1), fed.identity(2)]
    certs = [
        (
            {"terms": pack_terms, "signatures": sigs("credit_pack", pack_terms, outsiders)},
            "not_eligible",
        ),
        (
            {"terms": pack_terms, "signatures": sigs("credit_pack", pack_terms, members2)},
            "too_few_signatures",
        ),
        (
            {
                "terms": pack_terms,
                "signatures": sigs(
                    "credit_pack_quote", pack_terms, [fed.identity(i) for i in range(4)]
                ),
            },
            "bad_signature",
        ),
    ]
    # each pushed by another member: three invalid envelopes from one would ban it (the
    # tests' threshold), and the later tests need every member
    for (cert, reason), member in zip(certs, [fed.identity(i) for i in (1, 2, 3)], strict=True):
        env = sign_envelope(
            member,
            type_="credit_pack_certificate",
            network_id=net.network_id,
            chain_id=net.chain_id,
            payload=cert,
        ).to_wire()
        body = batch_body(
            member,
            net.network_id,
            net.chain_id,
            fed.daemons[0].address,
            [env["id"]],
            [canonical_json(env)],
        )
        r = httpx.post(
            f"{fed.daemons[0].url}/p2p/envelopes",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        # a refusal names its reason, and the pusher's penalties show whether an earlier test
        # left it banned
        given = httpx.get(
            f"{fed.daemons[0].url}/peer_penalties", params={"address": member.address}, timeout=10
        ).json()
        assert r.status_code == 200, (r.text, given)
        assert [x["reason"] for x in r.json()["rejected"]] == [reason], r.json()
    assert balances(fed, terms["purchase_id"])[0] == 404


def test_required_confirmations_pending_until_mined(tmp_path: Path) -> None:
    fed3 = start(tmp_path / "conf3", confirmations_required=3)
    try:
        gina = buyer(fed3)
        q = quote_for(fed3, gina, 33)
        t = q["terms"]
        tx = send_payment(
            fed3.anvil.url,
            gina,
            to=t["payment_address"],  # type: ignore[union-attr]
            value_wei=t["amount_wei"],
            data=t["purchase_id"],
        )
        with client(fed3, 2) as c:
            res = c.confirm_purchase(t["purchase_id"], tx, q)
        assert res["status"] == "pending" and res["reason"] == "awaiting_confirmations"
        assert "1 of 3" in res["detail"]
        import time

        time.sleep(1.5)  # the job runs meanwhile: still pending
        with client(fed3, 2) as c:
            assert c.purchase_status(t["purchase_id"])["status"] == "pending"
        fed3.anvil.mine(2)  # type: ignore[union-attr]

        def certified() -> bool:
            with client(fed3, 2) as c:
                return c.purchase_status(t["purchase_id"])["status"] == "certified"

        wait_until(certified, timeout_s=20, what="the job completes it by itself")
        wait_until(lambda: balances(fed3, t["purchase_id"]) == [33] * 4, what="everywhere")
    finally:
        fed3.stop()


def test_a_dissenting_peer_does_not_block_a_quorum(tmp_path: Path) -> None:
    net_price = 10**12
    fed_d = start(tmp_path / "dissent", network_patch={3: {"credit_price_wei": 2 * net_price}})
    try:
        hank = buyer(fed_d)
        # daemon 3 prices differently; the other three agree, which is a quorum
        with client(fed_d, 0, hank) as c:
            pack = c.buy_credits(11, fed_d.anvil.url)  # type: ignore[union-attr]
        assert pack["amount_wei"] == 11 * net_price
        signers = {s["signer"] for s in pack["certificate"]["signatures"]}
        assert len(signers) >= 3
        # asked directly, the dissenter refuses with its reason ...
        with client(fed_d, 3, hank) as c:
            with pytest.raises(SupernodeAPIError) as err:
                c.request_quote(11)
        # ... its own quote finds no quorum: the others refuse its price
        assert err.value.status == 503 and "price_mismatch" in err.value.body["detail"]
        wait_until(lambda: balances(fed_d, pack["pack_id"]) == [11] * 4, what="all hold it")
    finally:
        fed_d.stop()


def test_same_request_means_the_same_quote_anywhere(fed: LocalFederation) -> None:
    net = fed.network
    assert net is not None
    ivy = Identity.generate()
    fed.anvil.send_eth(ivy.address, ETH)  # type: ignore[union-attr]  (no quote without funds)
    env = sign_envelope(
        ivy,
        type_="credit_purchase_request",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={"credits": 3, "nonce": "n1"},
    )
    post = lambda i: httpx.post(  # noqa: E731
        f"{fed.daemons[i].url}/credit_purchase_initial_request",
        content=env.model_dump_json(),
        timeout=10,
    ).json()
    first, again = post(0), post(0)
    assert first == again
    wait_until(lambda: post(2) == first, what="the quote is known at another supernode")
    other = sign_envelope(
        ivy,
        type_="credit_purchase_request",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={"credits": 3, "nonce": "n2"},
    )
    second = httpx.post(
        f"{fed.daemons[0].url}/credit_purchase_initial_request",
        content=other.model_dump_json(),
        timeout=10,
    ).json()
    assert second["terms"]["purchase_id"] != first["terms"]["purchase_id"]
