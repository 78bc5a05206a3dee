"""Audits and reputation with real processes: anvil mining a block a second (5-block
epochs), four daemons, each with its own Petals node: daemons 0 and 3 honest (one node),
daemon 1 serving another model under the same name, daemon 2 behind a proxy that cuts its
text but bills in full. Requests run; members audit each other; when the epochs close,
every member shows the same table, the cheats fail their audits, fall and are marked
invalid, and clients stop choosing them. Forged and unauthorised events are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from supernode.client import SupernodeAPIError, SupernodeClient, rank_supernodes
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import LocalFederation, NodeSpec
from supernode.federation.transport import batch_body
from supernode.reputation.rules import ReputationRules
from tests.conftest import TEST_SETTINGS, buy_pack, cheating_front, pack_state, wait_until

pytestmark = pytest.mark.integration

HONEST, OTHER_SEED, TRUNCATING = 0, 1, 2  # node indexes
NODE_MAP = {0: [HONEST], 1: [OTHER_SEED], 2: [TRUNCATING], 3: [HONEST]}
CHEATS = (1, 2)  # daemon indexes
EPOCH_BLOCKS = 5
RULES = ReputationRules(invalid_after=3)
MODEL = "tiny-llama"
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_NODE_HEALTH_INTERVAL_S": "1",
    "SUPERNODE_AUDIT_INTERVAL_S": "0.5",
    "SUPERNODE_AUDIT_FETCH_TIMEOUT_S": "3",
    "SUPERNODE_AUDIT_FETCH_TRIES": "2",
    "SUPERNODE_AUDIT_RETRY_S": "0.5",
    "SUPERNODE_AUDIT_MAX_IN_FLIGHT": "4",
    "SUPERNODE_AUDIT_MAX_PER_MINUTE": "600",
}
PROMPTS = [
    "the cat sat on the mat",
    "a river runs through the old town",
    "people who read books often",
    "the king gave the boy a map",
]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("reputation"),
        peers=4,
        node_specs=[NodeSpec(), NodeSpec(seed=1), NodeSpec(front=cheating_front(8))],
        node_map=dict(NODE_MAP),
        block_time=1,
        epoch_blocks=EPOCH_BLOCKS,
        reputation=RULES,
        settings=dict(SETTINGS),
    ) as f:
        yield f


def get(fed: LocalFederation, i: int, path: str, **params: Any) -> Any:
    r = httpx.get(f"{fed.daemons[i].url}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def chain_epoch(fed: LocalFederation) -> int:
    return get(fed, 0, "/get_inference_sn_reputation_scores")["chain_epoch"] or 0


def tables_agree(fed: LocalFederation, epoch: int) -> dict[str, Any] | None:
    """The table of ``epoch`` if every daemon has it with one hash, else None."""
    tables = []
    for i in range(4):
        r = httpx.get(
            f"{fed.daemons[i].url}/get_inference_sn_reputation_scores",
            params={"epoch": epoch},
            timeout=10,
        )
        if r.status_code != 200:
            return None
        tables.append(r.json())
    if len({t["hash"] for t in tables}) != 1:
        return None
    return tables[0]


def run_requests(
    fed: LocalFederation,
    owner: Identity,
    pack: str,
    n: int,
    executors: tuple[int, ...] = (0, 1, 2, 3),
) -> list[str]:
    """``n`` greedy requests spread over ``executors``; their request ids."""
    ids = []
    for k in range(n):
        i = executors[k % len(executors)]
        with SupernodeClient(fed.daemons[i].url, identity=owner) as c:
            quote = c.validate_usage(
                pack, MODEL, PROMPTS[k % len(PROMPTS)] + f" {k}", {"max_new_tokens": 12}, 10**9
            )["payload"]
            c.confirm_usage(quote)
            wait_until(
                lambda c=c, q=quote: (
                    c.request_status(q["request_id"])["status"] in ("completed", "failed")
                ),
                timeout_s=60,
                what="the request to finish",
            )
            ids.append(quote["request_id"])
        wait_until(  # every daemon applied the spend: the next order takes the next sequence
            lambda seq=(pack_state(fed, i, pack) or {}).get("next_sequence"): all(
                (pack_state(fed, j, pack) or {}).get("next_sequence") == seq for j in range(4)
            ),
            what="the spend applied everywhere",
        )
    return ids


@pytest.fixture(scope="module")
def traffic(fed: LocalFederation) -> dict[str, Any]:
    """Requests in two epochs or more; then wait until a table after them has closed."""
    owner, pack = buy_pack(fed, 5_000)
    wait_until(lambda: chain_epoch(fed) >= 1, timeout_s=30, what="the first epoch")
    first = chain_epoch(fed)
    ids = run_requests(fed, owner, pack, 24)
    last = chain_epoch(fed)
    # closed once the chain is 2 epochs past it (grace 1), then the audits' verdicts are in
    target = last
    table = wait_until(
        lambda: tables_agree(fed, target),
        timeout_s=EPOCH_BLOCKS * 6 + 60,
        interval_s=1.0,
        what=f"every daemon's table of epoch {target}",
    )
    return {"owner": owner, "pack": pack, "ids": ids, "first": first, "last": last, "table": table}


def cli(*args: str) -> Any:
    """`supernode client ARGS`, as a user runs it; its JSON output."""
    out = subprocess.run(
        [sys.executable, "-m", "supernode.cli", "client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def rows(table: dict[str, Any], fed: LocalFederation) -> list[dict[str, Any]]:
    by = {r["address"]: r for r in table["rows"]}
    return [by[d.address] for d in fed.daemons]


def test_cheats_fail_their_audits_and_fall_identically_everywhere(
    fed: LocalFederation, traffic: dict[str, Any]
) -> None:
    r = rows(traffic["table"], fed)
    for i in CHEATS:
        assert r[i]["audits_failed"] > 0, r[i]
        assert r[i]["invalid"], r[i]
        assert r[i]["pass_rate_bps"] == 0, r[i]
    for i in (0, 3):
        assert r[i]["audits_failed"] == 0, r[i]  # the majority of its auditors are honest
        assert not r[i]["invalid"]
        assert r[i]["audits_passed"] > 0
        assert r[i]["score"] > max(r[c]["score"] for c in CHEATS), r
    # the verdicts are stored everywhere: the failing ones name a position
    events = get(fed, 0, "/get_reputation_events", address=fed.daemons[0].address)
    fails = [
        e
        for e in events["sent"]
        if e["kind"] == "audit_verdict" and e["payload"]["verdict"] == "fail"
    ]
    assert fails and all(e["payload"]["position"] is not None for e in fails)
    assert {e["subject"] for e in fails} <= {fed.daemons[i].address for i in CHEATS}


def test_clients_stop_choosing_an_invalid_supernode(
    fed: LocalFederation, traffic: dict[str, Any]
) -> None:
    listing = get(fed, 3, "/supernode_list_json")
    by = {r["address"]: r for r in listing["supernodes"]}
    for i in CHEATS:
        assert by[fed.daemons[i].address]["reputation_invalid"] is True
    chosen = [r["address"] for r in rank_supernodes(listing)]
    assert chosen and not set(chosen) & {fed.daemons[i].address for i in CHEATS}
    # the CLI: the table, and --choose never lands on a cheat
    shown = cli("reputation", "--supernode", fed.daemons[2].url)
    assert shown["hash"] == get(fed, 2, "/get_inference_sn_reputation_scores")["hash"]
    chosen_info = cli("info", "--choose", "--supernode", fed.daemons[1].url)
    assert chosen_info["address"] not in {fed.daemons[i].address for i in CHEATS}
    metrics = httpx.get(f"{fed.daemons[0].url}/metrics", timeout=10).text
    assert 'supernode_audits_total{what="failed"}' in metrics


def test_a_user_rates_a_request_it_paid_for_once(
    fed: LocalFederation, traffic: dict[str, Any]
) -> None:
    owner = traffic["owner"]
    request_id = traffic["ids"][-1]
    with SupernodeClient(fed.daemons[0].url, identity=owner) as c:
        accepted = c.rate(request_id, 5)
        assert accepted["accepted"] is True
        with pytest.raises(SupernodeAPIError) as replay:
            c.rate(request_id, 4)  # one rating per paid request
        assert replay.value.status == 409
    stranger = Identity.generate()
    with SupernodeClient(fed.daemons[1].url, identity=stranger) as c:
        with pytest.raises(SupernodeAPIError) as not_payer:
            c.rate(traffic["ids"][0], 1)
        assert not_payer.value.status == 403
        with pytest.raises(SupernodeAPIError) as unknown:
            c.rate("0x" + "ab" * 32, 1)
        assert unknown.value.status == 404
    # the rating reaches every member
    wait_until(
        lambda: all(
            any(
                e["kind"] == "user_rating" and e["request_id"] == request_id
                for e in get(fed, i, "/get_reputation_events", address=fed.daemons[0].address)[
                    "sent"
                ]
            )
            for i in range(4)
        ),
        what="the rating at every member",
    )


def signed(fed: LocalFederation, signer: Identity, type_: str, **payload: Any) -> dict[str, Any]:
    assert fed.network is not None
    return sign_envelope(
        signer,
        type_=type_,
        network_id=fed.network.network_id,
        chain_id=fed.network.chain_id,
        payload=payload,
        ttl_s=600,
    ).to_wire()


def post_event(fed: LocalFederation, i: int, raw: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{fed.daemons[i].url}/update_inference_sn_reputation_score", json=raw, timeout=10
    )


def push(fed: LocalFederation, pusher: int, to: int, env: dict[str, Any]) -> dict[str, Any]:
    """Push an envelope to daemon ``to`` as member ``pusher`` (the p2p wire, for real)."""
    net = fed.network
    assert net is not None
    body = batch_body(
        fed.identity(pusher),
        net.network_id,
        net.chain_id,
        fed.daemons[to].address,
        [env["id"]],
        [canonical_json(env)],
    )
    r = httpx.post(
        f"{fed.daemons[to].url}/p2p/envelopes",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_forged_and_unauthorised_events_are_refused_and_not_stored(
    fed: LocalFederation, traffic: dict[str, Any]
) -> None:
    # a new request of daemon 3 (its epoch still open), daemon 0's verdict on it, and the
    # executor's summary that verdict carries
    (rid,) = run_requests(fed, traffic["owner"], traffic["pack"], 1, executors=(3,))

    def verdict_by_0() -> dict[str, Any] | None:
        sent = get(fed, 0, "/get_reputation_events", address=fed.daemons[0].address)["sent"]
        return next(
            (e for e in sent if e["kind"] == "audit_verdict" and e["request_id"] == rid), None
        )

    audited = wait_until(verdict_by_0, what="daemon 0's verdict on the new request")
    epoch, summary = audited["epoch"], audited["payload"]["summary"]
    base = {"epoch": epoch, "request_id": rid, "executor": fed.daemons[3].address}

    def refused(raw: dict[str, Any], reason: str) -> None:
        r = post_event(fed, 0, raw)
        assert r.status_code == 422 and r.json()["reason"] == reason, r.text

    # the executor judging itself
    refused(
        signed(fed, fed.identity(3), "audit_verdict", verdict="pass", summary=summary, **base),
        "self_audit",
    )
    # a verdict for a request that never ran: its "summary" is not signed by the executor
    never = "0x" + "cd" * 32
    fake = {**summary, "payload": {**summary["payload"], "request_id": never}}
    refused(
        signed(
            fed,
            fed.identity(1),
            "audit_verdict",
            verdict="fail",
            summary=fake,
            **{**base, "request_id": never},
        ),
        "unknown_request",
    )
    # an outsider's verdict
    refused(
        signed(fed, Identity.generate(), "audit_verdict", verdict="fail", summary=summary, **base),
        "unknown_sender",
    )
    # signed now, for an epoch long closed
    refused(
        signed(
            fed,
            fed.identity(1),
            "audit_verdict",
            verdict="fail",
            summary=summary,
            **{**base, "epoch": 0},
        ),
        "epoch_closed",
    )
    # a seed reveal that does not match its commitment, pushed by a member: refused, and
    # the member that pushed it is penalised
    bad_reveal = signed(
        fed, fed.identity(1), "audit_seed_reveal", epoch=epoch, seed="0x" + "11" * 32
    )
    report = push(fed, 1, 2, bad_reveal)
    assert [v["reason"] for v in report["rejected"]] == ["reveal_mismatch"], report
    penalties = get(fed, 2, "/peer_penalties", address=fed.daemons[1].address)
    assert any(p["reason"] == "reveal_mismatch" for p in penalties["penalties"]), penalties
    # nothing of these is stored anywhere
    for i in range(4):
        sent3 = get(fed, i, "/get_reputation_events", address=fed.daemons[3].address, epoch=epoch)
        assert not any(e["kind"] == "audit_verdict" for e in sent3["sent"])
        sent1 = get(fed, i, "/get_reputation_events", address=fed.daemons[1].address)
        assert bad_reveal["id"] not in {e["event_id"] for e in sent1["sent"]}


def test_every_member_computes_the_same_table_every_epoch(
    fed: LocalFederation, traffic: dict[str, Any]
) -> None:
    for e in range(traffic["first"], traffic["last"] + 1):
        assert tables_agree(fed, e) is not None, f"epoch {e}"
