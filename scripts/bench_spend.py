"""Spend benchmark: start a local federation of real processes, certify spends, stop it.

Run:  .venv/bin/python scripts/bench_spend.py --peers 4 --spends 2000 --concurrency 32 [--keep]

It starts anvil + ``--peers`` `supernode run` daemons (supernode.devnet.LocalFederation) in
a temporary folder, stops everything it started (also on error, Ctrl-C or SIGTERM), and
prints one JSON object as the LAST line of stdout; progress goes to stderr.

Setup (untimed): ``--packs`` owners (default: one per in-flight stream, ``--concurrency``),
each funded by ``anvil_setBalance`` and buying one pack with the SDK's
``SupernodeClient.buy_credits`` at daemon ``k % peers`` (``--setup-concurrency`` at once),
then waited for until every daemon holds every pack. The ``--spends`` orders are spread
over the packs (pack ``k`` gets ``spends // packs`` or one more); every pack is spent at
one executor, daemon ``k % peers`` (so the executors rotate over all daemons), with a fixed
``--amount`` per order; a pack holds exactly what its orders spend unless ``--credits``
says more. Every order (the owner's ``spend_order`` envelope {pack_id, sequence 0, 1, ...,
amount, request_id, executor}) is signed and serialised before timing: signing is the
client's CPU, not the federation's. Each daemon gets its own keep-alive HTTP client
(aiohttp if installed, else httpx; ``--client``), whose connections are opened before
timing.

Figures:

* ``certs_per_s`` (the headline): ``--concurrency`` workers take packs from a queue; a
  worker sends the pack's next order with ``POST /spend_credits`` to its executor, waits
  for the answer, and puts the pack back (the orders of one pack are sequential: order
  ``s + 1`` is sent only after ``s`` is certified). certificates (200 answers carrying
  the order and at least a quorum of votes) / (first order sent -> last answer). Behind
  each 200 the executor voted (durably), asked the other members for their votes (each
  checks the order against its own copy of the pack, catching up from the executor if
  it has not applied the previous certificate yet, and votes durably) and published the
  certificate by gossip.
* ``p50_ms`` / ``p99_ms`` (also ``p90_ms``, ``mean_ms``, ``max_ms``): per certified order,
  request sent -> 200 with the certificate read (nearest rank). The loop is closed (a
  worker sends again as soon as it is answered), so with every worker busy the mean
  latency is about ``concurrency / certs_per_s`` (Little's law): once the federation is
  saturated, more concurrency adds latency, not certificates.
* ``failures``: orders without such a 200 (HTTP error, refusal, timeout); their reasons in
  ``failure_reasons`` (the refusal's ``reason`` code, or the exception) and samples in
  ``failure_samples``. A pack whose order failed is not spent further (its later
  sequences would be refused): ``orders_not_sent`` counts those.
* ``conflicts``: refusals that name ``conflicting_order`` or ``no_quorum`` (0 expected in
  this honest run).
* ``double_spends``: after the run (gossip given up to ``--verify-timeout`` s to bring
  every daemon to every pack's last certified sequence: ``certs_everywhere_s``), every
  pack's certificates are read at EVERY daemon (``GET /get_credit_pack_spends/{pack_id}``,
  1000 per page): (pack, sequence) pairs with two different order ids (over the daemons
  and the answers the client got) + packs whose certified total (distinct orders) exceeds
  the pack's credits. ``missing_certificates``: (daemon, certificate) pairs the client got
  a 200 for that a daemon does not hold; ``unexpected_certificates``: certificates a daemon
  holds that the client got no 200 for (e.g. certified after a client timeout).
* ``balances_consistent``: every daemon's ``GET /check_credit_pack_balance/{pack_id}``
  says remaining_credits = credits - the certified total and next_sequence = the number
  of certified orders. ``invalid_certificates``: answers that fail
  ``verify_spend_certificate`` (the owner's signature and a quorum of member votes;
  checked after timing).
* ``server_cpu_ms_per_cert`` / ``client_cpu_ms_per_cert``: CPU (user + system, /proc) of
  the daemons + anvil, and of this process, in the timed phase per certificate; the two
  share the machine's ``cpu_count`` cores, so on few cores they bound the rate
  (``server_cpu_share``: cores used by each process). ``machine_busy_cores``: the whole
  machine's busy CPU in that phase (/proc/stat); ``other_processes_cores``: the part no
  process of this benchmark used (another job on the machine skews every figure: rerun).

* ``batching``: from every daemon's /metrics, before and after the timed phase: vote
  requests per vote batch (``vote_batch``), votes per durable commit (``vote_commit``),
  envelopes per push (``push_batch``), intake calls per commit (``intake_commit``) and HTTP
  requests per certificate (the client's order + vote batches + pushes).

Audits: ``--audits on|off`` sets every daemon's ``SUPERNODE_AUDITS_ENABLED`` (default on,
the daemon's default); ``--audit-rate-bps N`` sets the network file's reputation rule
``fixed_rate_bps``: every executor is audited on N / 10,000 of its requests (500 is 5%, an
executor's rate at 5,000 requests in the score window; default: the rules' own rates).
``--block-time S`` has anvil mine a block every S s (default: a block per transaction), so
that epochs pass and the reputation jobs (seeds, liveness, tables, audit rounds) really run
during the spends. The spends carry no inference, so nothing is drawn for an audit: only
those background rounds cost. The three are in the report (``audits``, ``audit_rate_bps``,
``block_time``).

``--timeout`` bounds the timed phase (what is unanswered by then is cancelled and counted
as failures); every other wait is bounded too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchlib import T0, checked, federation, log, parser, pct, run

from supernode.client import SupernodeClient
from supernode.credits.orders import verify_spend_certificate
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import ETH, LocalFederation
from supernode.errors import SupernodeError
from supernode.federation.membership import quorum
from supernode.reputation.rules import ReputationRules

CONFLICT_REASONS = ("conflicting_order", "no_quorum")
PAGE = 1000  # the API's largest page of certificates

Post = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy so far (Linux /proc/stat, all cores)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_cpu(fed: LocalFederation) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by each daemon and anvil (Linux /proc)."""
    procs = {f"daemon{d.index}": d.proc for d in fed.daemons}
    procs["anvil"] = fed.anvil.proc if fed.anvil else None
    out = {}
    try:
        for name, proc in procs.items():
            stat = Path(f"/proc/{proc.pid}/stat").read_text()  # type: ignore[union-attr]
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return out


@dataclass
class Pack:
    index: int
    owner: Identity
    executor: int  # daemon index
    pack_id: str = ""
    credits: int = 0
    orders: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)  # id, body, wire
    next: int = 0  # next order to send
    certified: list[dict[str, Any]] = field(default_factory=list)  # certificates received
    dead: bool = False  # an order failed: the later sequences are not sent


class Bench:
    def __init__(self, fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]):
        self.fed, self.args, self.out, self.d = fed, args, out, fed.daemons
        n = args.packs
        self.per_pack = [args.spends // n + (1 if k < args.spends % n else 0) for k in range(n)]
        self.packs = [
            Pack(k, Identity.generate(), k % len(self.d)) for k in range(n) if self.per_pack[k]
        ]
        need = max(self.per_pack) * args.amount
        self.credits = args.credits or need
        if self.credits < need:
            raise SystemExit(f"--credits {args.credits} < {need} (the most one pack spends)")

    # -- setup (untimed) ------------------------------------------------------------------
    def fund_owners(self) -> None:
        assert self.fed.anvil is not None
        with httpx.Client(timeout=10) as c:
            for p in self.packs:
                params = [p.owner.address, hex(10 * ETH)]
                body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": params}
                if "error" in (data := c.post(self.fed.anvil.url, json=body).json()):
                    raise RuntimeError(f"anvil_setBalance: {data['error']}")

    def buy_packs(self) -> None:
        anvil = self.fed.anvil
        assert anvil is not None
        log(
            f"setup: {len(self.packs)} owners buy a pack of {self.credits} credits each, "
            f"{self.args.setup_concurrency} at once"
        )

        def buy(p: Pack) -> None:
            with SupernodeClient(self.d[p.executor].url, identity=p.owner) as c:
                pack = c.buy_credits(self.credits, anvil.url, wait_s=60)
            p.pack_id, p.credits = pack["pack_id"], pack["credits"]

        start = time.perf_counter()
        with ThreadPoolExecutor(self.args.setup_concurrency) as pool:
            for f in [pool.submit(buy, p) for p in self.packs]:
                f.result(timeout=120)
        self.out["setup_buy_s"] = round(time.perf_counter() - start, 3)
        log(f"setup: packs bought in {self.out['setup_buy_s']} s")

    async def packs_everywhere(self, client: httpx.AsyncClient) -> None:
        """Every daemon must hold every pack before spending (a voter without it refuses)."""
        pending = {(dm.url, p.pack_id) for dm in self.d for p in self.packs}
        start = time.perf_counter()
        while pending:
            keys = sorted(pending)
            got = await asyncio.gather(*(self.balance(client, u, pid) for u, pid in keys))
            pending -= {k for k, b in zip(keys, got, strict=True) if b is not None}
            if not pending:
                break
            if time.perf_counter() - start > self.args.verify_timeout:
                raise TimeoutError(f"{len(pending)} (daemon, pack) pairs still missing")
            await asyncio.sleep(0.2)
        log(f"setup: every daemon holds every pack ({time.perf_counter() - start:.2f} s)")

    def presign(self) -> None:
        net = self.fed.network
        assert net is not None
        start = time.perf_counter()
        for p in self.packs:
            executor = self.d[p.executor].address
            for seq in range(self.per_pack[p.index]):
                env = sign_envelope(
                    p.owner,
                    type_="spend_order",
                    network_id=net.network_id,
                    chain_id=net.chain_id,
                    payload={
                        "pack_id": p.pack_id,
                        "sequence": seq,
                        "amount": self.args.amount,
                        "request_id": "0x" + secrets.token_hex(32),
                        "executor": executor,
                    },
                    ttl_s=self.args.order_ttl,
                )
                wire = env.to_wire()
                p.orders.append((env.id, json.dumps(wire).encode(), wire))
        self.out["presign_s"] = round(time.perf_counter() - start, 3)
        log(f"setup: {self.args.spends} orders signed in {self.out['presign_s']} s")

    # -- the timed phase ------------------------------------------------------------------
    async def spend(self, post: Post) -> None:
        args, o, q = self.args, self.out, quorum(len(self.fed.network.members))  # type: ignore[union-attr]
        log(
            f"spend: {args.spends} orders over {len(self.packs)} packs, {args.concurrency} in "
            f"flight, executors rotating over {len(self.d)} daemons ({o['client']} client)"
        )
        queue: asyncio.Queue[Pack] = asyncio.Queue()
        for p in self.packs:
            queue.put_nowait(p)
        lat_ms: list[float] = []
        reasons: Counter[str] = Counter()
        samples: list[dict[str, Any]] = []
        self.in_flight: dict[int, Pack] = {}

        def fail(p: Pack, status: int | None, reason: str, detail: str) -> None:
            p.dead = True
            reasons[reason] += 1
            if len(samples) < 5:
                samples.append(
                    {
                        "pack": p.index,
                        "sequence": p.next,
                        "daemon": p.executor,
                        "status": status,
                        "reason": reason,
                        "detail": detail[:300],
                    }
                )

        async def worker() -> None:
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                oid, body, _wire = p.orders[p.next]
                url = f"{self.d[p.executor].url}/spend_credits"
                self.in_flight[id(p)] = p
                t = time.perf_counter()
                try:
                    status, raw = await post(url, body)
                except Exception as exc:  # noqa: BLE001 - any client error is a failure
                    self.in_flight.pop(id(p), None)
                    fail(p, None, type(exc).__name__, repr(exc))
                    continue
                ms = (time.perf_counter() - t) * 1000
                self.in_flight.pop(id(p), None)
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {"detail": raw[:300].decode(errors="replace")}
                if not isinstance(data, dict):
                    data = {"detail": str(data)}
                if status == 200:
                    order, votes = data.get("order"), data.get("votes")
                    if not (isinstance(order, dict) and order.get("id") == oid):
                        fail(p, status, "wrong_order", json.dumps(data)[:300])
                        continue
                    if not (isinstance(votes, list) and len(votes) >= q):
                        fail(p, status, "too_few_votes", json.dumps(data)[:300])
                        continue
                    lat_ms.append(ms)
                    p.certified.append(data)
                    p.next += 1
                    if p.next < len(p.orders):
                        queue.put_nowait(p)
                else:
                    reason = str(data.get("reason") or data.get("error") or f"HTTP {status}")
                    fail(p, status, reason, str(data.get("detail", data)))

        cpu0, ccpu0, m0 = proc_cpu(self.fed), time.process_time(), machine_busy_s()
        start = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=args.timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
        cpu1, ccpu1, m1 = proc_cpu(self.fed), time.process_time(), machine_busy_s()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if pending:
            o["timed_out"] = True
            for p in self.in_flight.values():
                fail(p, None, "bench_timeout", f"no answer within --timeout {args.timeout} s")
        certified = len(lat_ms)
        o["certs_per_s"] = round(certified / wall, 2) if wall > 0 else None
        o["p50_ms"], o["p99_ms"] = pct(lat_ms, 50), pct(lat_ms, 99)
        o["conflicts"] = sum(reasons[r] for r in CONFLICT_REASONS)
        o["certified"] = certified
        o["failures"] = sum(reasons.values())
        o["orders_not_sent"] = sum(len(p.orders) - p.next for p in self.packs) - o["failures"]
        o["spend_phase_s"] = round(wall, 3)
        o["p90_ms"] = pct(lat_ms, 90)
        o["mean_ms"] = round(statistics.fmean(lat_ms), 2) if lat_ms else None
        o["max_ms"] = round(max(lat_ms), 2) if lat_ms else None
        if reasons:
            o["failure_reasons"] = dict(reasons)
            o["failure_samples"] = samples
            log(f"spend: {o['failures']} FAILED: {dict(reasons)}; e.g. {json.dumps(samples[:2])}")
        if certified:
            o["client_cpu_ms_per_cert"] = round((ccpu1 - ccpu0) * 1000 / certified, 2)
            if cpu0 is not None and cpu1 is not None:
                used = {k: cpu1[k] - cpu0[k] for k in cpu0}
                o["server_cpu_ms_per_cert"] = round(sum(used.values()) * 1000 / certified, 2)
                o["server_cpu_share"] = {k: round(v / wall, 2) for k, v in used.items()}
                if m0 is not None and m1 is not None:
                    # busy CPU of anything else on the machine (another benchmark skews ours)
                    other = (m1 - m0) - sum(used.values()) - (ccpu1 - ccpu0)
                    o["machine_busy_cores"] = round((m1 - m0) / wall, 2)
                    o["other_processes_cores"] = round(max(0.0, other) / wall, 2)
        log(
            f"spend: {certified} certified in {wall:.2f} s = {o['certs_per_s']}/s; p50 "
            f"{o['p50_ms']} ms p90 {o['p90_ms']} ms p99 {o['p99_ms']} ms"
        )

    # -- verification (untimed) -----------------------------------------------------------
    @staticmethod
    async def balance(client: httpx.AsyncClient, url: str, pack_id: str) -> dict[str, Any] | None:
        try:
            r = await client.get(f"{url}/check_credit_pack_balance/{pack_id}", timeout=10)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    async def certificates_at(
        self, client: httpx.AsyncClient, url: str, pack_id: str
    ) -> list[dict[str, Any]]:
        certs: list[dict[str, Any]] = []
        frm = 0
        while True:
            r = await client.get(
                f"{url}/get_credit_pack_spends/{pack_id}",
                params={"from_sequence": frm, "limit": PAGE},
                timeout=30,
            )
            r.raise_for_status()
            page = r.json()["certificates"]
            certs += page
            if len(page) < PAGE:
                return certs
            frm = page[-1]["order"]["payload"]["sequence"] + 1

    async def verify(self, client: httpx.AsyncClient) -> None:
        o, d, args = self.out, self.d, self.args
        sem = asyncio.Semaphore(16)

        async def bounded(coro: Awaitable[Any]) -> Any:
            async with sem:
                return await coro

        # 1. gossip: every daemon at every pack's last certified sequence (bounded wait)
        pairs = [(dm, p) for dm in d for p in self.packs]
        pending = set(range(len(pairs)))
        start = time.perf_counter()
        while True:
            keys = sorted(pending)
            got = await asyncio.gather(
                *(bounded(self.balance(client, pairs[i][0].url, pairs[i][1].pack_id)) for i in keys)
            )
            pending -= {
                i
                for i, b in zip(keys, got, strict=True)
                if b is not None and b["next_sequence"] >= len(pairs[i][1].certified)
            }
            if not pending or time.perf_counter() - start > args.verify_timeout:
                break
            await asyncio.sleep(0.2)
        o["certs_everywhere_s"] = None if pending else round(time.perf_counter() - start, 3)
        if pending:
            o["packs_behind"] = len(pending)  # (daemon, pack) pairs
        log(f"verify: gossip settled: {not pending} ({time.perf_counter() - start:.2f} s)")

        # 2. every pack's certificates at every daemon, and its balance there
        held = await asyncio.gather(
            *(bounded(self.certificates_at(client, dm.url, p.pack_id)) for dm, p in pairs)
        )
        balances = await asyncio.gather(
            *(bounded(self.balance(client, dm.url, p.pack_id)) for dm, p in pairs)
        )
        ids: dict[tuple[int, int], set[str]] = defaultdict(set)  # (pack, seq) -> order ids
        amounts: dict[tuple[int, int, str], int] = {}  # (pack, seq, order id) -> amount
        for p in self.packs:
            for c in p.certified:
                pl = c["order"]["payload"]
                ids[p.index, pl["sequence"]].add(c["order"]["id"])
                amounts[p.index, pl["sequence"], c["order"]["id"]] = pl["amount"]
        client_got = {k: set(v) for k, v in ids.items()}
        missing = unexpected = 0
        consistent = True
        for (dm, p), certs, bal in zip(pairs, held, balances, strict=True):
            seen = set()
            for c in certs:
                pl = c["order"]["payload"]
                key = (p.index, pl["sequence"])
                ids[key].add(c["order"]["id"])
                amounts[p.index, pl["sequence"], c["order"]["id"]] = pl["amount"]
                seen.add(key)
                if c["order"]["id"] not in client_got.get(key, ()):
                    unexpected += 1
            missing += sum(1 for k in client_got if k[0] == p.index and k not in seen)
            total = sum(c["amount"] for c in (x["order"]["payload"] for x in p.certified))
            if (
                bal is None
                or bal["credits"] != p.credits
                or bal["remaining_credits"] != p.credits - total
                or bal["next_sequence"] != len(p.certified)
            ):
                consistent = False
                if "balance_sample" not in o:
                    o["balance_sample"] = {
                        "daemon": dm.index,
                        "pack": p.index,
                        "got": bal,
                        "expected_remaining": p.credits - total,
                        "expected_next_sequence": len(p.certified),
                    }
        two_orders = sum(1 for v in ids.values() if len(v) > 1)
        spent: Counter[int] = Counter()
        for (k, _seq, _oid), amt in amounts.items():
            spent[k] += amt
        overspent = sum(1 for p in self.packs if spent[p.index] > p.credits)
        o["double_spends"] = two_orders + overspent
        o["balances_consistent"] = consistent
        o["sequences_with_two_orders"] = two_orders
        o["overspent_packs"] = overspent
        o["missing_certificates"] = missing
        o["unexpected_certificates"] = unexpected
        o["certificates_checked"] = sum(len(c) for c in held)

        # 3. every certificate the client got is the owner's order + a quorum of votes
        net = self.fed.network
        assert net is not None
        eligible = [m.address for m in net.members]
        invalid = 0
        for p in self.packs:
            for c in p.certified:
                try:
                    verify_spend_certificate(c, net, eligible, quorum(len(eligible)))
                except SupernodeError:
                    invalid += 1
        o["invalid_certificates"] = invalid
        log(
            f"verify: {o['certificates_checked']} certificates read at {len(d)} daemons; "
            f"double spends {o['double_spends']}, balances consistent {consistent}, missing "
            f"{missing}, unexpected {unexpected}, invalid {invalid}"
        )

    # -- clients and the whole run --------------------------------------------------------
    def choose_client(self) -> str:
        if self.args.client in ("auto", "aiohttp"):
            try:
                import aiohttp  # noqa: F401 - optional: lighter on the client's CPU
            except ImportError:
                if self.args.client == "aiohttp":
                    raise
                return "httpx"
            return "aiohttp"
        return "httpx"

    async def timed(self) -> None:
        """The spend phase with one keep-alive client per daemon, connections opened first."""
        per = math.ceil(self.args.concurrency / len(self.d)) + 1
        headers = {"content-type": "application/json"}
        if self.out["client"] == "aiohttp":
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=self.args.request_timeout)
            sessions = {
                dm.url: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=per), timeout=timeout
                )
                for dm in self.d
            }

            async def post(url: str, body: bytes) -> tuple[int, bytes]:
                base = url.rsplit("/", 1)[0]
                async with sessions[base].post(url, data=body, headers=headers) as r:
                    return r.status, await r.read()

            async def warm(base: str) -> None:
                async with sessions[base].get(f"{base}/ready") as r:
                    await r.read()

            try:
                await asyncio.gather(*(warm(dm.url) for dm in self.d for _ in range(per)))
                await self.spend(post)
            finally:
                await asyncio.gather(*(s.close() for s in sessions.values()))
        else:
            limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
            clients = {
                dm.url: httpx.AsyncClient(limits=limits, timeout=self.args.request_timeout)
                for dm in self.d
            }

            async def post(url: str, body: bytes) -> tuple[int, bytes]:
                r = await clients[url.rsplit("/", 1)[0]].post(url, content=body, headers=headers)
                return r.status_code, r.content

            try:
                await asyncio.gather(
                    *(clients[dm.url].get(f"{dm.url}/ready") for dm in self.d for _ in range(per))
                )
                await self.spend(post)
            finally:
                await asyncio.gather(*(c.aclose() for c in clients.values()))

    async def counters(self, client: httpx.AsyncClient) -> Counter[str]:
        """The batching counters of /metrics, summed over the daemons."""
        from prometheus_client.parser import text_string_to_metric_families

        wanted = {
            "supernode_push_envelopes_total": "pushed",
            "supernode_push_batches_total": "push_batches",
            "supernode_vote_requests_total": "vote_requests",
            "supernode_vote_batches_total": "vote_batches",
        }
        total: Counter[str] = Counter()
        for dm in self.d:
            resp = await client.get(f"{dm.url}/metrics", timeout=10)
            for fam in text_string_to_metric_families(resp.text):
                for s in fam.samples:
                    if s.name in wanted:
                        total[wanted[s.name]] += int(s.value)
                    elif s.name in (
                        "supernode_group_commits_total",
                        "supernode_group_commit_items_total",
                    ):
                        kind = "commits" if "commits" in s.name else "items"
                        total[f"{s.labels['writer']}_{kind}"] += int(s.value)
        return total

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits) as client:
            await self.packs_everywhere(client)
            self.presign()
            before = await self.counters(client)
            await self.timed()
            c = await self.counters(client)
            c.subtract(before)

            def mean(items: str, batches: str) -> float | None:
                return round(c[items] / c[batches], 2) if c[batches] else None

            self.out["batching"] = {
                "vote_batch": mean("vote_requests", "vote_batches"),
                "vote_commit": mean("votes_items", "votes_commits"),
                "push_batch": mean("pushed", "push_batches"),
                "intake_commit": mean("intake_items", "intake_commits"),
                "http_requests_per_cert": round(
                    (c["vote_batches"] + c["push_batches"]) / max(1, self.args.spends) + 1, 2
                ),
            }
            await self.verify(client)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--spends", type=int, default=2000, help="spend orders to certify")
    p.add_argument("--concurrency", type=int, default=32, help="orders in flight")
    p.add_argument("--packs", type=int, default=None, help="packs (default --concurrency)")
    p.add_argument("--amount", type=int, default=1, help="credits per order")
    p.add_argument("--credits", type=int, default=None, help="per pack (default: what it spends)")
    p.add_argument("--setup-concurrency", type=int, default=4, help="pack purchases at once")
    p.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto")
    p.add_argument("--order-ttl", type=int, default=600, help="orders' lifetime (s)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="per order (s)")
    p.add_argument("--timeout", type=float, default=150.0, help="bound of the timed phase (s)")
    p.add_argument("--audits", choices=("on", "off"), default="on", help="members audit")
    p.add_argument("--audit-rate-bps", type=int, default=None, help="fixed audit rate (bps)")
    p.add_argument("--block-time", type=int, default=None, help="s between blocks (anvil)")
    args = checked(p)
    args.packs = args.packs or args.concurrency
    if min(args.spends, args.concurrency, args.packs, args.amount, args.setup_concurrency) < 1:
        p.error("--spends, --concurrency, --packs, --amount, --setup-concurrency must be >= 1")
    if args.audit_rate_bps is not None and not 0 <= args.audit_rate_bps <= 10_000:
        p.error("--audit-rate-bps must be 0..10000")
    if args.block_time is not None and args.block_time < 1:
        p.error("--block-time must be >= 1")
    if args.packs < args.concurrency:
        log(f"note: {args.packs} packs allow at most {args.packs} orders in flight")

    headline = ["certs_per_s", "p50_ms", "p99_ms", "conflicts", "double_spends"]
    headline += ["balances_consistent", "failures"]
    out: dict[str, Any] = {"peers": args.peers, "spends": args.spends}
    out["concurrency"] = args.concurrency
    out.update(dict.fromkeys(headline))  # the report's key order; null if never measured
    out.update(audits=args.audits, audit_rate_bps=args.audit_rate_bps, block_time=args.block_time)
    rules = (
        None if args.audit_rate_bps is None else ReputationRules(fixed_rate_bps=args.audit_rate_bps)
    )
    with federation(
        "bench-spend-",
        out,
        args.keep,
        peers=args.peers,
        settings={"SUPERNODE_AUDITS_ENABLED": "true" if args.audits == "on" else "false"},
        reputation=rules,
        block_time=args.block_time,
    ) as fed:
        bench = Bench(fed, args, out)
        out["client"] = bench.choose_client()
        bench.fund_owners()
        bench.buy_packs()  # synchronous SDK calls in threads: Ctrl-C still stops here
        asyncio.run(bench.run())
    out.update(packs=len(bench.packs), amount=args.amount, credits_per_pack=bench.credits)
    out.update(quorum=quorum(args.peers), cpu_count=os.cpu_count())
    out["wall_s"] = round(time.time() - T0, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run(main)
