"""Answering at once from a key's reservation and settling afterwards, against real
daemons and a real node: requests are certified many to a settlement; a delegate
SIGKILLed mid-load and restarted settles every request it answered exactly once; no key
is ever answered past its reservation; a quorum out of reach only delays settlement (and
past the bound on unsettled credits, new requests wait, then get 503)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from supernode.client import SupernodeClient
from supernode.credits.orders import reservation_id, settlement_id
from supernode.crypto.envelope import sign_envelope
from supernode.devnet import LocalFederation
from supernode.inference.openai import decode_api_key
from tests.conftest import (
    TEST_SETTINGS,
    buy_pack,
    pack_state,
    post_signed,
    settled_balance,
    wait_until,
)

pytestmark = pytest.mark.integration
UNSETTLED_MAX = 500
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_QUORUM_TIMEOUT_S": "2",
    "SUPERNODE_MAX_NEW_TOKENS": "32",
    "SUPERNODE_MAX_INPUT_TOKENS": "64",
    "SUPERNODE_AUDITS_ENABLED": "false",
    "SUPERNODE_SETTLE_INTERVAL_S": "0.5",
    "SUPERNODE_UNSETTLED_MAX_CREDITS": str(UNSETTLED_MAX),
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("settle"), peers=4, petals_nodes=1, settings=dict(SETTINGS)
    ) as f:
        yield f


def make_key(fed: LocalFederation, daemon: int, credits: int) -> tuple[str, str, str]:
    """A key on ``daemon`` with ``credits`` reserved: (key, parent pack, reservation)."""
    owner, pack_id = buy_pack(fed, credits + 1_000)
    with SupernodeClient(fed.daemons[daemon].url, identity=owner) as c:
        key = c.delegate(pack_id, max_credits=credits, expires_in_s=3600)
    mine = reservation_id(pack_id, decode_api_key(key)["id"])
    assert settled_balance(fed, mine) == credits
    return key, pack_id, mine


def client(fed: LocalFederation, daemon: int, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{fed.daemons[daemon].url}/v1", api_key=key, max_retries=0, timeout=60
    )


def settled_items(fed: LocalFederation, daemon: int, pack_id: str) -> list[dict[str, Any]]:
    """Every request the reservation's settlements list, as member ``daemon`` holds them
    (checked: each settlement adds up)."""
    r = httpx.get(f"{fed.daemons[daemon].url}/get_credit_pack_spends/{pack_id}", timeout=10)
    items: list[dict[str, Any]] = []
    for cert in r.json()["certificates"]:
        p = cert["order"]["payload"]
        if "settle" in p:
            assert p["amount"] == sum(i["amount"] for i in p["settle"])
            assert p["request_id"] == settlement_id([i["request_id"] for i in p["settle"]])
            items += p["settle"]
    return items


def run_load(
    fed: LocalFederation, daemon: int, key: str, threads: int, each: int, stop: threading.Event
) -> tuple[list[str], list[str]]:
    """``threads`` clients sending ``each`` requests in a row (until ``stop``): the
    request ids answered, and the errors."""
    model = fed.nodes[0].model
    answered: list[str] = []
    errors: list[str] = []

    def worker() -> None:
        with client(fed, daemon, key) as c:
            for _ in range(each):
                if stop.is_set():
                    return
                try:
                    r = c.completions.create(model=model, prompt="count me", max_tokens=8)
                    answered.append(r.model_extra["supernode"]["request_id"])  # type: ignore[index]
                except (openai.APIError, httpx.HTTPError) as exc:
                    code = getattr(exc, "code", None)
                    errors.append(f"{type(exc).__name__} {code}: {exc}"[:200])

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    return answered, errors


def test_requests_are_answered_at_once_and_settled_many_at_a_time(fed: LocalFederation) -> None:
    key, _, mine = make_key(fed, 0, 20_000)
    answered, errors = run_load(fed, 0, key, 8, 5, threading.Event())
    assert len(answered) == 40 and not errors, errors[:3]
    spent = 20_000 - settled_balance(fed, mine)
    for member in (0, 2):  # the delegate and another member hold the same settlements
        items = settled_items(fed, member, mine)
        assert Counter(i["request_id"] for i in items) == Counter(answered)  # each once
        assert sum(i["amount"] for i in items) == spent
    certs = pack_state(fed, 2, mine)["next_sequence"]  # type: ignore[index]
    assert 1 <= certs < 40  # many requests to a quorum round
    with SupernodeClient(fed.daemons[0].url, identity=fed.identity(0)) as op:
        usage = op.key_usage(decode_api_key(key)["id"])
    assert usage["totals"]["requests"] == 40
    assert usage["totals"]["credits"] == usage["totals"]["credits_settled"] == spent


def test_a_delegate_killed_mid_load_settles_every_answer_exactly_once(
    fed: LocalFederation,
) -> None:
    """SIGKILL while 6 clients send requests, so that requests are answered and not
    settled, and others run; after the restart every answered request is in exactly one
    settlement, and what was journaled but never answered is charged at most its quote."""
    victim = fed.daemons[3]
    key, _, mine = make_key(fed, 3, 20_000)
    stop = threading.Event()
    got: list[tuple[list[str], list[str]]] = []
    load = threading.Thread(target=lambda: got.append(run_load(fed, 3, key, 6, 40, stop)))
    load.start()
    try:
        wait_until(
            lambda: (
                (pack_state(fed, 3, mine) or {}).get("unsettled_credits", 0) > 0
                and (pack_state(fed, 3, mine) or {}).get("next_sequence", 0) >= 1
            ),
            timeout_s=60,
            interval_s=0.05,
            what="requests answered, some settled and some not",
        )
        victim.kill()  # SIGKILL
    finally:
        stop.set()
        load.join(timeout=120)
    answered, _errors = got[0]
    assert answered
    victim.start()
    victim.wait_ready()
    balance = settled_balance(fed, mine)
    items = settled_items(fed, 0, mine)
    counts = Counter(i["request_id"] for i in items)
    assert max(counts.values()) == 1  # nothing settled twice
    assert set(answered) <= set(counts)  # every answered request settled
    assert sum(i["amount"] for i in items) == 20_000 - balance
    assert settled_items(fed, 1, mine) == items  # every member holds the same
    assert pack_state(fed, 3, mine)["unsettled_credits"] == 0  # type: ignore[index]


def test_no_key_is_answered_past_its_reservation(fed: LocalFederation) -> None:
    """30 requests at once on a key reserved 200 credits (about 10 requests' worth): the
    answered ones fit, the rest get OpenAI's exhausted quota; and a settlement for more
    than the reservation holds, signed by its own delegate, is refused by every member."""
    key, pack_id, mine = make_key(fed, 0, 200)
    answered, errors = run_load(fed, 0, key, 10, 3, threading.Event())
    assert answered and errors
    assert all(e.startswith("RateLimitError insufficient_quota") for e in errors), errors[:3]
    balance = settled_balance(fed, mine)
    items = settled_items(fed, 0, mine)
    assert Counter(i["request_id"] for i in items) == Counter(answered)
    assert sum(i["amount"] for i in items) == 200 - balance and balance >= 0
    assert settled_balance(fed, pack_id) == 1_000  # the parent gave 200, nothing more
    # the federation's side: the delegate itself cannot settle past the reservation
    net = fed.network
    assert net is not None
    ids = ["0x" + os.urandom(32).hex()]
    over = sign_envelope(
        fed.identity(0),
        type_="spend_order",
        network_id=net.network_id,
        chain_id=net.chain_id,
        payload={
            "pack_id": mine,
            "sequence": pack_state(fed, 1, mine)["next_sequence"],  # type: ignore[index]
            "amount": balance + 1,
            "request_id": settlement_id(ids),
            "executor": fed.daemons[0].address,
            "settle": [{"request_id": ids[0], "amount": balance + 1}],
        },
    )
    for member in fed.daemons[1:]:
        r = post_signed(f"{member.url}/spend_credits", over.model_dump_json())
        assert r.status_code == 422 and r.json()["reason"] == "insufficient_credits", r.text


def test_a_quorum_out_of_reach_delays_settlement_and_loses_nothing(
    fed: LocalFederation,
) -> None:
    """Two of four members SIGSTOPped (no quorum): requests are still answered at once,
    up to the bound on unsettled credits; past it a request waits, then gets 503. Once
    the members resume, every answered request is settled, once."""
    key, _, mine = make_key(fed, 0, 20_000)
    paused = [fed.daemons[i].proc for i in (1, 2)]
    answered: list[str] = []
    refused: list[openai.APIStatusError] = []
    model = fed.nodes[0].model
    for p in paused:
        assert p is not None
        os.kill(p.pid, signal.SIGSTOP)
    try:
        with client(fed, 0, key) as c:
            for _ in range(60):
                try:
                    r = c.completions.create(model=model, prompt="count me", max_tokens=8)
                except openai.APIStatusError as exc:
                    refused.append(exc)
                    break
                answered.append(r.model_extra["supernode"]["request_id"])  # type: ignore[index]
        unsettled = pack_state(fed, 0, mine)["unsettled_credits"]  # type: ignore[index]
        held = pack_state(fed, 3, mine)["remaining_credits"]  # type: ignore[index]
    finally:
        for p in paused:
            assert p is not None
            os.kill(p.pid, signal.SIGCONT)
    assert refused and refused[0].status_code == 503, refused
    assert refused[0].code == "settlement_behind"
    assert refused[0].response.headers["retry-after"] == "1"
    assert 0 < unsettled <= UNSETTLED_MAX and len(answered) >= 2
    assert held == 20_000  # nothing certified while the quorum was out of reach
    started = time.monotonic()
    balance = settled_balance(fed, mine)
    items = settled_items(fed, 3, mine)
    assert Counter(i["request_id"] for i in items) == Counter(answered)
    assert sum(i["amount"] for i in items) == 20_000 - balance == unsettled
    assert time.monotonic() - started < 60
