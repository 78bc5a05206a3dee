"""Audits in an honest federation, then members that misbehave in other ways than serving
wrong text, with real processes (anvil mining a block a second, 5-block epochs, four
daemons on two honest Petals nodes):

- honest: a few hundred audits of greedy and sampled requests, not one failure, and every
  member shows the same table and hash for every closed epoch;
- an executor that does not serve its results to auditors (its rows deleted), an auditor
  that never audits (audits off), a member that loses its seed and so never reveals it:
  each is penalised as the rules say, identically everywhere;
- a member that was down for epochs catches up by anti-entropy and computes the same
  tables.

The tests run in file order and share one federation."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from supernode.client import SupernodeClient
from supernode.devnet import LocalFederation, NodeSpec
from tests.conftest import TEST_SETTINGS, buy_pack, pack_state, wait_until

pytestmark = pytest.mark.integration

EPOCH_BLOCKS = 5
MODEL = "tiny-llama"
UNSERVING, NO_REVEAL, LAZY = 1, 2, 3  # daemon indexes, each with its fault
SETTINGS = {
    **TEST_SETTINGS,
    "SUPERNODE_NODE_HEALTH_INTERVAL_S": "1",
    "SUPERNODE_AUDIT_INTERVAL_S": "0.5",
    "SUPERNODE_AUDIT_DELAY_S": "3",
    "SUPERNODE_AUDIT_FETCH_TIMEOUT_S": "2",
    "SUPERNODE_AUDIT_FETCH_TRIES": "2",
    "SUPERNODE_AUDIT_RETRY_S": "0.5",
    "SUPERNODE_AUDIT_MAX_IN_FLIGHT": "4",
    "SUPERNODE_AUDIT_MAX_PER_MINUTE": "1000",
    "SUPERNODE_PEER_PROBE_INTERVAL_S": "1",
}
GREEDY = {"max_new_tokens": 10}
SAMPLED = {"max_new_tokens": 10, "do_sample": True, "top_k": 5, "temperature": 800}
WORDS = "the river king map boy old town read book people water sun".split()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("reputation-faults"),
        peers=4,
        node_specs=[NodeSpec(), NodeSpec()],
        node_map={0: [0], 1: [0], 2: [1], 3: [1]},
        block_time=1,
        epoch_blocks=EPOCH_BLOCKS,
        settings=dict(SETTINGS),
    ) as f:
        yield f


@pytest.fixture(scope="module")
def payer(fed: LocalFederation) -> dict[str, Any]:
    owner, pack = buy_pack(fed, 100_000)
    return {"owner": owner, "pack": pack, "k": 0}


def get(fed: LocalFederation, i: int, path: str, **params: Any) -> Any:
    r = httpx.get(f"{fed.daemons[i].url}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def chain_epoch(fed: LocalFederation, i: int = 0) -> int:
    return get(fed, i, "/get_inference_sn_reputation_scores")["chain_epoch"] or 0


def tables_agree(fed: LocalFederation, epoch: int, at: tuple[int, ...] = (0, 1, 2, 3)) -> Any:
    tables = []
    for i in at:
        r = httpx.get(
            f"{fed.daemons[i].url}/get_inference_sn_reputation_scores",
            params={"epoch": epoch},
            timeout=10,
        )
        if r.status_code != 200:
            return None
        tables.append(r.json())
    return tables[0] if len({t["hash"] for t in tables}) == 1 else None


def run(
    fed: LocalFederation,
    payer: dict[str, Any],
    n: int,
    executors: tuple[int, ...],
    after: Any = None,
) -> list[str]:
    """``n`` requests, greedy and sampled in turn, over ``executors``; ``after(i, rid)``
    runs once each has completed. Returns the request ids."""
    ids = []
    for _ in range(n):
        k = payer["k"]
        payer["k"] += 1
        i = executors[k % len(executors)]
        params = GREEDY if k % 2 == 0 else SAMPLED
        prompt = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(4 + k % 5))
        with SupernodeClient(fed.daemons[i].url, identity=payer["owner"]) as c:
            quote = c.validate_usage(payer["pack"], MODEL, prompt, params, 10**9)["payload"]
            c.confirm_usage(quote)
            rid = quote["request_id"]
            wait_until(
                lambda c=c, rid=rid: c.request_status(rid)["status"] in ("completed", "failed"),
                timeout_s=60,
                what="the request to finish",
            )
        if after is not None:
            after(i, rid)
        ids.append(rid)
        seq = (pack_state(fed, i, payer["pack"]) or {}).get("next_sequence")
        live = [j for j, d in enumerate(fed.daemons) if d.running]
        wait_until(
            lambda seq=seq, live=live: all(
                (pack_state(fed, j, payer["pack"]) or {}).get("next_sequence") == seq for j in live
            ),
            what="the spend applied at every running daemon",
        )
    return ids


def verdicts(fed: LocalFederation, i: int) -> list[dict[str, Any]]:
    sent = get(fed, i, "/get_reputation_events", address=fed.daemons[i].address)["sent"]
    return [e for e in sent if e["kind"] == "audit_verdict"]


def wait_closed(fed: LocalFederation, epoch: int, at: tuple[int, ...] = (0, 1, 2, 3)) -> Any:
    return wait_until(
        lambda: tables_agree(fed, epoch, at),
        timeout_s=EPOCH_BLOCKS * 4 + 60,
        interval_s=1.0,
        what=f"the same table of epoch {epoch} at daemons {at}",
    )


def row(table: dict[str, Any], fed: LocalFederation, i: int) -> dict[str, Any]:
    return next(r for r in table["rows"] if r["address"] == fed.daemons[i].address)


def test_honest_audits_never_fail_and_every_member_shows_one_table(
    fed: LocalFederation, payer: dict[str, Any]
) -> None:
    wait_until(lambda: chain_epoch(fed) >= 2, timeout_s=30, what="the seeds' first epoch")
    first = chain_epoch(fed)
    run(fed, payer, 72, (0, 1, 2, 3))
    # and the OpenAI path (its own pack: a delegate spends from it alone), greedy and sampled
    owner, pack = buy_pack(fed, 20_000)
    for i in range(4):
        with SupernodeClient(fed.daemons[i].url, identity=owner) as c:
            key = c.delegate(pack, max_credits=4_000, expires_in_s=3600)
        with openai.OpenAI(
            base_url=f"{fed.daemons[i].url}/v1", api_key=key, max_retries=0, timeout=60
        ) as client:
            for t in (0.0, 0.8, 0.0):
                client.chat.completions.create(
                    model=MODEL,
                    max_tokens=10,
                    temperature=t,
                    messages=[{"role": "user", "content": f"{WORDS[i]} and the {WORDS[-i - 1]}"}],
                )
        # the next delegate spends from the pack's next sequence once every member has it
        seq = (pack_state(fed, i, pack) or {}).get("next_sequence")
        wait_until(
            lambda seq=seq: all(
                (pack_state(fed, j, pack) or {}).get("next_sequence") == seq for j in range(4)
            ),
            what="the delegate's spends applied everywhere",
        )
    last = chain_epoch(fed)
    for e in range(first, last + 1):
        wait_closed(fed, e)
    done = [v for i in range(4) for v in verdicts(fed, i)]
    counts: dict[str, int] = {}
    for v in done:
        counts[v["value"]] = counts.get(v["value"], 0) + 1
    print(f"honest federation: {len(done)} verdicts {counts} over epochs {first}..{last}")
    assert counts.get("fail", 0) == 0, [v for v in done if v["value"] == "fail"][:3]
    assert counts.get("pass", 0) >= 150, counts
    sampled = [v for v in done if v["value"] == "pass" and "sampled" in v["payload"]["detail"]]
    assert sampled, "sampled requests were audited too"
    table = tables_agree(fed, last)
    for i in range(4):
        r = row(table, fed, i)
        assert r["audits_failed"] == 0 and not r["invalid"], r
        assert r["audits_passed"] > 0


def test_faults_are_penalised_identically_everywhere(
    fed: LocalFederation, payer: dict[str, Any]
) -> None:
    lazy = fed.daemons[LAZY]
    lazy.stop()
    lazy.env["SUPERNODE_AUDITS_ENABLED"] = "false"  # an auditor that never audits
    lazy.start()
    lazy.wait_ready()
    start = chain_epoch(fed) + 1
    wait_until(lambda: chain_epoch(fed) >= start, timeout_s=30, what="a fresh epoch")
    # the member that loses its seeds: the ones committed and not yet revealed are gone
    db = sqlite3.connect(fed.daemons[NO_REVEAL].env["SUPERNODE_DATABASE_FILE"], timeout=10)
    with db:
        db.execute("DELETE FROM audit_seeds WHERE revealed = 0")
    db.close()

    def unserve(i: int, rid: str) -> None:  # the executor no longer serves what it ran
        if i == UNSERVING:
            conn = sqlite3.connect(fed.daemons[i].env["SUPERNODE_DATABASE_FILE"], timeout=10)
            with conn:
                conn.execute("DELETE FROM inference_requests WHERE request_id = ?", (rid,))
            conn.close()

    before = wait_closed(fed, start - 1)
    run(fed, payer, 16, (0, 1, 2, 3), after=unserve)
    last = chain_epoch(fed)
    tables = [wait_closed(fed, e) for e in range(start, last + 1)]
    keys = ("results_unavailable", "audits_missed", "epochs_without_reveal", "audits_failed")
    # what the fault epochs added to each member's counts (a table sums its whole window)
    added = {
        i: {k: row(tables[-1], fed, i)[k] - row(before, fed, i)[k] for k in keys} for i in range(4)
    }
    print(f"faults: {added}")
    assert added[UNSERVING]["results_unavailable"] > 0
    assert added[LAZY]["audits_missed"] > 0
    assert added[NO_REVEAL]["epochs_without_reveal"] > 0
    assert all(added[i]["audits_failed"] == 0 for i in range(4))  # nobody served wrong text
    assert added[0]["results_unavailable"] == added[0]["epochs_without_reveal"] == 0
    final = tables[-1]
    honest = row(final, fed, 0)["score"]
    for i in (UNSERVING, NO_REVEAL, LAZY):
        assert row(final, fed, i)["score"] < honest, final


def test_a_member_down_for_epochs_catches_up_to_the_same_tables(
    fed: LocalFederation, payer: dict[str, Any]
) -> None:
    down = fed.daemons[0]
    down.stop()
    start = chain_epoch(fed, 1)
    run(fed, payer, 8, (1, 2, 3))
    wait_until(lambda: chain_epoch(fed, 1) >= start + 2, timeout_s=30, what="two epochs down")
    end = chain_epoch(fed, 1)
    down.start()
    down.wait_ready()
    for e in range(start, end + 1):
        table = wait_closed(fed, e)
        assert table is not None
    # its absence is in the tables, alike everywhere: the others saw it down
    assert any(
        row(tables_agree(fed, e), fed, 0)["epochs_missed_liveness"] for e in range(start, end + 1)
    )
