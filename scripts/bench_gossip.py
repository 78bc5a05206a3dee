"""Gossip benchmark: start a local federation of real processes, measure, stop it.

Run:  .venv/bin/python scripts/bench_gossip.py --peers 4 --messages 5000 [--keep]

It starts anvil + ``--peers`` `supernode run` daemons (supernode.devnet.LocalFederation) in
a temporary folder, runs three phases, stops everything it started (also on error or
Ctrl-C), and prints one JSON object as the LAST line of stdout. Progress goes to stderr.

Figures (all processes share one clock, so cross-process times are comparable):

* ``ingest_msgs_per_s``: ``--messages`` sn_message envelopes, pre-signed by member 0
  before timing starts, pushed to daemon 1 with ``POST /p2p/envelopes`` as member 0 (the
  peer-to-peer push path), ``--batch`` per request, ``--concurrency`` requests in flight.
  messages / (first send -> last response); a response comes only after the envelopes
  are durably committed. The envelopes are broadcasts (no recipient), as real gossip is,
  so the other daemons pull them from daemon 1 by anti-entropy in the background while
  the phase runs: that competes for the same CPU and is part of what is measured (it is
  what a real federation does). ``ingest_propagation_s``: ingest end -> every daemon has
  them (by anti-entropy). ``ingest_settle_s``: ingest end -> no daemon takes in anything
  (for two anti-entropy intervals); ``ingest_duplicates_pulled``: envelopes the daemons
  received again meanwhile (from /metrics): the redundant work anti-entropy does.
* ``broadcast_p50_ms`` / ``broadcast_p99_ms``: ``--broadcasts`` messages sent through
  ``POST /broadcast_message_to_all_sns`` at daemon 0 (``--bcast-concurrency`` in flight),
  once the federation is quiet again after the ingest.
  Per message: max over daemons of its ``received_at`` (when that daemon stored it)
  minus the client's send time (taken just before the request).
* ``catchup_s``: daemon 3 is SIGKILLed, ``--messages`` new envelopes are pushed to every
  live daemon (all stored before the restart), daemon 3 is restarted; restart call ->
  daemon 3 has them all (polled every 0.1 s). ``catchup_from_ready_s``: from /ready = 200
  to caught up (the anti-entropy pull itself, without process start-up).

Counts are polled through ``GET /get_message_metadata`` (per-type counters kept in the
same transaction as the messages), which is far cheaper for the daemon than listing
thousands of rows every 0.1 s; the final state is checked once with ``/get_messages``.
Daemon settings used are reported under ``settings``: ``--anti-entropy-interval`` (default
1 s; the daemon's own default is 2 s) is an operator setting. It sets how soon the other
daemons pull the ingested envelopes; a restarted daemon runs its first pull 0.2 s after
start whatever the interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import httpx
from benchlib import T0, checked, federation, log, parser, pct, run

from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import Daemon, LocalFederation
from supernode.federation.network import NetworkFile
from supernode.federation.transport import batch_body

INGEST, BCAST, CATCHUP = "bench-ingest", "bench-bcast", "bench-catchup"
Signed = tuple[str, bytes]  # (envelope id, canonical JSON bytes)


def presign(identity: Identity, net: NetworkFile, message_type: str, n: int) -> list[Signed]:
    out = []
    for i in range(n):
        env = sign_envelope(
            identity,
            type_="sn_message",
            network_id=net.network_id,
            chain_id=net.chain_id,
            payload={"message_type": message_type, "message_body": f"{message_type} #{i}"},
            ttl_s=3600,
        )
        out.append((env.id, canonical_json(env.to_wire())))
    return out


async def push_all(
    client: httpx.AsyncClient,
    identity: Identity,
    net: NetworkFile,
    daemon: Daemon,
    envs: list[Signed],
    batch: int,
    conc: int,
) -> dict[str, Any]:
    """Push ``envs`` to ``daemon`` as ``identity``; returns summed reports and timing."""
    chunks = [envs[i : i + batch] for i in range(0, len(envs), batch)]
    # built before timing: one transport signature per batch, the pushing peer's work
    bodies = [
        batch_body(identity, net.network_id, net.chain_id, daemon.address, *zip(*c, strict=True))
        for c in chunks
    ]
    sem = asyncio.Semaphore(conc)
    total = {"accepted": 0, "duplicates": 0, "rejected": 0, "ignored": 0}

    async def one(body: bytes) -> None:
        async with sem:
            r = await client.post(
                f"{daemon.url}/p2p/envelopes",
                content=body,
                headers={"content-type": "application/json"},
                timeout=60,
            )
        if r.status_code != 200:
            raise RuntimeError(f"push to {daemon.index}: HTTP {r.status_code} {r.text[:300]}")
        rep = r.json()
        for k in total:
            total[k] += rep[k] if isinstance(rep[k], int) else len(rep[k])

    start = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    total["elapsed_s"] = time.perf_counter() - start
    total["batches"] = len(bodies)
    return total


async def type_count(client: httpx.AsyncClient, daemon: Daemon, message_type: str) -> int:
    r = await client.get(f"{daemon.url}/get_message_metadata", timeout=5)
    r.raise_for_status()
    for row in r.json()["by_type"]:
        if row["message_type"] == message_type:
            return int(row["total_messages"])
    return 0


async def wait_counts(
    client: httpx.AsyncClient, daemons: list[Daemon], message_type: str, n: int, timeout_s: float
) -> float:
    """Wait until every daemon has ``n`` messages of the type; returns seconds waited."""
    start = time.perf_counter()
    pending = list(daemons)
    while True:
        counts = {d.index: await type_count(client, d, message_type) for d in pending}
        pending = [d for d in pending if counts[d.index] < n]
        if not pending:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"{message_type}: have {counts} of {n} after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


async def intake_total(client: httpx.AsyncClient, daemons: list[Daemon]) -> dict[str, int]:
    """Envelopes taken in (accepted, duplicates) so far, summed over ``daemons``."""
    tot = {"accepted": 0, "duplicates": 0}
    for d in daemons:
        r = await client.get(f"{d.url}/metrics", timeout=5)
        r.raise_for_status()
        for line in r.text.splitlines():
            for k in tot:
                if line.startswith("supernode_envelopes_total{") and f'verdict="{k}"' in line:
                    tot[k] += int(float(line.rsplit(" ", 1)[1]))
    return tot


async def settle(
    client: httpx.AsyncClient, daemons: list[Daemon], args: argparse.Namespace
) -> float:
    """Wait until no daemon takes in anything for two anti-entropy intervals (the pulls
    of what another peer already pulled are over); returns seconds waited."""
    start = last_change = time.perf_counter()
    last = await intake_total(client, daemons)
    while time.perf_counter() - last_change < 2 * args.anti_entropy_interval + 0.3:
        if time.perf_counter() - start > args.timeout:
            raise TimeoutError(f"the federation did not settle within {args.timeout} s")
        await asyncio.sleep(0.25)
        now = await intake_total(client, daemons)
        if now != last:
            last, last_change = now, time.perf_counter()
    return last_change - start


async def list_messages(
    client: httpx.AsyncClient, daemon: Daemon, message_type: str, n: int
) -> list[dict[str, Any]]:
    r = await client.get(
        f"{daemon.url}/get_messages",
        timeout=30,
        params={
            "last_k_minutes": 60,
            "limit": min(max(n, 1), 100_000),
            "message_type": message_type,
        },
    )
    r.raise_for_status()
    return r.json()["messages"]


async def phase_ingest(
    client: httpx.AsyncClient, fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    n, d, ident0 = args.messages, fed.daemons, fed.identity(0)
    envs = presign(ident0, fed.network, INGEST, n)  # before timing
    before = await intake_total(client, d)
    log(f"ingest: {n} envelopes -> daemon 1, batch {args.batch}, {args.concurrency} in flight")
    rep = await push_all(client, ident0, fed.network, d[1], envs, args.batch, args.concurrency)
    if rep["accepted"] != n or rep["rejected"] or rep["ignored"]:
        raise RuntimeError(f"ingest: expected {n} accepted, got {rep}")
    out["ingest_msgs_per_s"] = round(n / rep["elapsed_s"], 1)
    out["ingest_s"] = round(rep["elapsed_s"], 3)
    out["ingest_batches"] = rep["batches"]
    log(f"ingest: {rep['elapsed_s']:.2f} s, {out['ingest_msgs_per_s']} msg/s")
    # a sync point too: daemon 3 must not still lack these when it is killed later
    out["ingest_propagation_s"] = round(await wait_counts(client, d, INGEST, n, args.timeout), 3)
    log(f"ingest: every daemon has them {out['ingest_propagation_s']} s later (anti-entropy)")
    # then the daemons pull from each other what each already has: wait for that to end so
    # that the broadcast phase measures latency, not this wave of duplicate pulls
    out["ingest_settle_s"] = round(out["ingest_propagation_s"] + await settle(client, d, args), 3)
    after = await intake_total(client, d)
    out["ingest_duplicates_pulled"] = after["duplicates"] - before["duplicates"]
    log(
        f"ingest: quiet {out['ingest_settle_s']} s after the end; the daemons took in "
        f"{out['ingest_duplicates_pulled']} duplicates meanwhile"
    )


async def phase_broadcast(
    client: httpx.AsyncClient, fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    d = fed.daemons
    nb = args.broadcasts if args.broadcasts is not None else min(args.messages, 1000)
    log(f"broadcast: {nb} messages via daemon 0, {args.bcast_concurrency} in flight")
    sent_at: dict[str, float] = {}
    sem = asyncio.Semaphore(args.bcast_concurrency)
    headers = {"Authorization": f"Bearer {d[0].token}"}

    async def bcast(i: int) -> None:
        async with sem:
            t = time.time()
            r = await client.post(
                f"{d[0].url}/broadcast_message_to_all_sns",
                headers=headers,
                json={"message_type": BCAST, "message_body": f"bcast #{i}", "wait_s": 0},
                timeout=30,
            )
        if r.status_code != 200:
            raise RuntimeError(f"broadcast {i}: HTTP {r.status_code} {r.text[:300]}")
        sent_at[r.json()["envelope_id"]] = t

    start = time.perf_counter()
    await asyncio.gather(*(bcast(i) for i in range(nb)))
    out["broadcast_send_s"] = round(time.perf_counter() - start, 3)
    await wait_counts(client, d, BCAST, nb, args.timeout)
    latest: dict[str, float] = {}  # envelope id -> last received_at over every daemon
    for dm in d:
        for m in await list_messages(client, dm, BCAST, nb):
            latest[m["envelope_id"]] = max(latest.get(m["envelope_id"], 0.0), m["received_at"])
    if set(latest) != set(sent_at):
        raise RuntimeError("broadcast: stored ids differ from the ids the API returned")
    lat_ms = [(latest[i] - sent_at[i]) * 1000 for i in sent_at]
    out["broadcast_messages"] = nb
    out["broadcast_p50_ms"] = round(pct(lat_ms, 50), 2)
    out["broadcast_p99_ms"] = round(pct(lat_ms, 99), 2)
    out["broadcast_max_ms"] = round(max(lat_ms), 2)
    out["broadcast_mean_ms"] = round(statistics.fmean(lat_ms), 2)
    log(
        f"broadcast: sent in {out['broadcast_send_s']} s; p50 {out['broadcast_p50_ms']} ms, "
        f"p99 {out['broadcast_p99_ms']} ms"
    )


async def phase_catchup(
    client: httpx.AsyncClient, fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    n, d, ident0 = args.messages, fed.daemons, fed.identity(0)
    envs = presign(ident0, fed.network, CATCHUP, n)
    await settle(client, d, args)  # cursors at rest before the kill
    down, live = d[3], [x for x in d if x.index != 3]
    log(f"catch-up: SIGKILL daemon 3, push {n} envelopes to daemons {[x.index for x in live]}")
    down.kill()
    reps = await asyncio.gather(
        *(
            push_all(client, ident0, fed.network, x, envs, args.batch, args.concurrency)
            for x in live
        )
    )
    for x, r in zip(live, reps, strict=True):
        # anti-entropy among the live daemons may store some first: duplicates are fine
        if r["accepted"] + r["duplicates"] != n or r["rejected"] or r["ignored"]:
            raise RuntimeError(f"catch-up push to daemon {x.index}: {r}")
    await wait_counts(client, live, CATCHUP, n, args.timeout)
    log("catch-up: stored on every live daemon; restarting daemon 3")
    t_start = time.perf_counter()
    down.start()
    t_ready: float | None = None
    while True:
        if time.perf_counter() - t_start > args.timeout:
            raise TimeoutError(f"catch-up: daemon 3 not caught up within {args.timeout} s")
        if not down.running:
            raise RuntimeError(f"daemon 3 exited after restart; see {down.log_path}")
        try:
            if t_ready is None and (await client.get(f"{down.url}/ready", timeout=2)).is_success:
                t_ready = time.perf_counter()
            if t_ready is not None and await type_count(client, down, CATCHUP) >= n:
                break
        except httpx.HTTPError:
            pass  # not listening yet
        await asyncio.sleep(0.1)
    t_done = time.perf_counter()
    assert t_ready is not None
    out["catchup_s"] = round(t_done - t_start, 3)
    out["catchup_messages"] = n
    out["catchup_ready_s"] = round(t_ready - t_start, 3)
    out["catchup_from_ready_s"] = round(t_done - t_ready, 3)
    log(f"catch-up: ready after {out['catchup_ready_s']} s, done after {out['catchup_s']} s")
    got = await list_messages(client, down, CATCHUP, n + 1)
    if len(got) != n:
        raise RuntimeError(f"catch-up: daemon 3 lists {len(got)} messages, expected {n}")


async def bench(fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        await phase_ingest(client, fed, args, out)
        await phase_broadcast(client, fed, args, out)
        await phase_catchup(client, fed, args, out)


def main() -> int:
    p = parser(__doc__, min_peers=4, verify_timeout=False)  # catch-up kills daemon 3
    p.add_argument("--messages", type=int, default=5000, help="envelopes in ingest and catch-up")
    p.add_argument("--batch", type=int, default=500, help="envelopes per push request")
    p.add_argument("--concurrency", type=int, default=3, help="push requests in flight")
    p.add_argument("--broadcasts", type=int, default=None, help="default min(messages, 1000)")
    p.add_argument("--bcast-concurrency", type=int, default=8)
    p.add_argument("--anti-entropy-interval", type=float, default=1.0, help="seconds")
    p.add_argument("--timeout", type=float, default=60.0, help="bound of each wait (s)")
    args = checked(p)
    if min(args.messages, args.batch, args.concurrency, args.bcast_concurrency) < 1:
        p.error("--messages, --batch and the concurrencies must be >= 1")
    if args.broadcasts is not None and args.broadcasts < 1:
        p.error("--broadcasts must be >= 1")

    settings = {"SUPERNODE_ANTI_ENTROPY_INTERVAL_S": str(args.anti_entropy_interval)}
    headline = ("ingest_msgs_per_s", "broadcast_p50_ms", "broadcast_p99_ms", "catchup_s")
    out: dict[str, Any] = {"peers": args.peers, "messages": args.messages}
    out.update(dict.fromkeys(headline))  # the report's key order; null if never measured
    with federation("bench-gossip-", out, args.keep, peers=args.peers, settings=settings) as fed:
        asyncio.run(bench(fed, args, out))
    out.update(
        ingest_batch_size=args.batch,
        ingest_concurrency=args.concurrency,
        broadcast_concurrency=args.bcast_concurrency,
        settings=settings,
        cpu_count=os.cpu_count(),
        wall_s=round(time.time() - T0, 2),
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run(main)
