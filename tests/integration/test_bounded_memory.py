"""Every in-memory map of a daemon stays bounded: after a few thousand paid requests (the
OpenAI path on several keys, and native requests with their streams), the maps hold what
is in progress (nothing, once idle), not what was ever done."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from supernode.client import SupernodeClient
from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS, buy_pack, wait_until

pytestmark = pytest.mark.integration
REQUESTS = 2000  # OpenAI requests, over KEYS keys
KEYS = 4
CONCURRENCY = 8
NATIVE = 30  # native requests (each with its output stream)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("memory"),
        peers=4,
        petals_nodes=1,
        settings=dict(TEST_SETTINGS, SUPERNODE_LOG_LEVEL="INFO"),
    ) as f:
        yield f


def sizes(fed: LocalFederation, i: int = 0) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{fed.daemons[i].url}/metrics", timeout=10).text.splitlines():
        if line.startswith("supernode_memory_entries{"):
            name = line.split('map="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def test_maps_hold_what_is_in_progress_not_what_was_done(fed: LocalFederation) -> None:
    d = fed.daemons[0]
    keys, packs = [], []
    for _ in range(KEYS):
        owner, pack_id = buy_pack(fed, 10**5)
        with SupernodeClient(d.url, identity=owner) as c:
            keys.append(c.delegate(pack_id, 5 * 10**4, 3600))  # (the rest for native spends)
            model = c.model_menu()[0]["model"]
        packs.append((owner, pack_id))
    failures: list[str] = []

    async def openai_load() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)
        async with httpx.AsyncClient(base_url=d.url, timeout=60) as http:

            async def worker(w: int) -> None:
                key = keys[w % KEYS]
                while not queue.empty():
                    i = queue.get_nowait()
                    r = await http.post(
                        "/v1/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": model, "prompt": f"number {i}", "max_tokens": 2},
                    )
                    if r.status_code != 200:
                        failures.append(r.text[:200])

            await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))

    asyncio.run(openai_load())
    owner, pack_id = packs[0]
    with SupernodeClient(d.url, identity=owner) as c:
        for i in range(NATIVE):
            assert c.infer(pack_id, model, f"native {i}", max_new_tokens=2)["output"] is not None
    assert not failures, failures[:3]

    def idle() -> dict[str, float] | None:
        s = sizes(fed)
        busy = s["inference_streams"] + s["inference_runs"] + s["inference_recording"]
        return s if busy == 0 and s["openai_pack_locks"] == 0 else None

    s = wait_until(idle, timeout_s=30, what="the daemon idle again")
    assert s["purchase_locks"] == 0, s
    # one per pack it certified for: each key's reservation and its pack, one native pack
    assert s["spend_last_certificates"] <= 2 * KEYS + 1, s
    assert s["spend_vote_askers"] <= len(fed.daemons), s  # one per peer
    assert s["connections_by_address"] <= 8, s  # addresses, not connections ever made
    assert s["intake_counts"] <= 20, s  # by verdict and reason, not by envelope
