"""Audit benchmark: what auditing every request costs, on a local federation of real processes.

Run:  .venv/bin/python scripts/bench_audit.py --requests 60 [--keep]

It starts anvil mining a block every ``--block-time`` s (1) with ``--epoch-blocks`` (5) blocks
an epoch, two `supernode petals-node` processes (the tiny random Llama, seed 0) and four
`supernode run` daemons, daemons 0 and 1 on node 0 and daemons 2 and 3 on node 1
(supernode.devnet.LocalFederation), in a temporary folder, with the audit timers of the
reputation integration tests (an audit round every 0.5 s, an audit 3 s after the result's
summary arrives, 4 audits in flight per daemon, 1000 started per minute at most; every
other setting is the daemon's default). It stops everything it started (also on error,
Ctrl-C or SIGTERM) and prints one JSON object as the LAST line of stdout; progress goes to
stderr.

One federation, two phases of ``--requests`` native paid requests each, sent one after
another by one payer (one pack, bought in setup), round-robin over the four executors. A
request is: a quote (``validate_usage``), the signed spend order (``confirm_usage``), then
its status polled every ``--poll-s`` s (0.05) until ``completed``; then, untimed but
inside the phase, the wait until every daemon has applied its spend. Greedy, 10 new
tokens, prompts of 4 to 8 words.

* A, audits off: every daemon runs with ``SUPERNODE_AUDITS_ENABLED=false`` (it still
  commits and reveals its seeds, signs liveness and computes the tables, but audits
  nothing).
* B, audits on: every daemon is stopped, given ``SUPERNODE_AUDITS_ENABLED=true`` and
  started again, one at a time, each just after an epoch boundary (a daemon down for less
  than an epoch misses no seed to commit or reveal; ``restart_s``: how long each was
  down), then two more boundaries are let pass, so that every daemon holds a committed
  seed for the epoch in progress. A member with fewer than 100 completed requests in the
  score window is audited on every request (docs/reputation.md), so each request is drawn
  by each of the three other members: 3 audits per request. Each audit fetches the result
  from the executor (a signed ``audit_fetch``), checks its hash and token count, has the
  auditor's own node tokenize it and generate it again (greedy, in the node's
  low-priority lane), compares, and gossips a signed verdict. After the last request the
  phase lasts until the audits are done: the daemons' ``supernode_audits_total{what=
  "done"}`` (/metrics, counted since the restart) grows by 3 x the requests, or stops
  growing for ``--audit-quiet-s`` s, or ``--audit-timeout`` s pass.

Before each phase, untimed: ``--warmup`` requests (one per executor by default; in B their
audits are waited for), then ``--idle-s`` s of nothing, measured: the CPU the processes take
with no request (``idle_cores_*``: anti-entropy, membership and node health checks, audit
rounds, epochs' seeds and tables). Before B the bench also waits until the epochs of
phase A's requests are closed, so no request of A (or of its warm-up) can be drawn for an
audit in B (``audits_assigned``, counted since the restart, = 3 x (requests + warm-up)
checks it).

Figures. CPU is user + system from /proc of each process and its descendants (the
node's own threads and children included), over the phase: from the first request sent to
``--settle-s`` s (2) after the last request (A) or the last audit (B):

* ``a_cpu_per_request_ms`` / ``b_cpu_per_request_ms``: ``{daemons, nodes, total}`` (total =
  the four daemons + both nodes), the phase's CPU minus its idle CPU (``idle_cores`` x the
  phase's wall time), per request. ``*_raw_cpu_per_request_ms``: the same without
  subtracting idle. ``anvil_cpu_ms`` and ``client_cpu_ms`` per phase are reported apart.
* ``audit_cpu_per_audit_ms``: ``{daemons, nodes, total}`` = (B - A) / ``audits_performed``
  (the /metrics count of audits finished during phase B: 3 x requests expected), both
  net of idle: what one audit costs the federation (the auditor's daemon and node, and the
  executor serving the result). ``audit_cpu_per_audit_raw_ms``: the same from raw CPU.
* ``audit_share_of_request``: audit_cpu_per_audit_ms.total / a_cpu_per_request_ms.total: one
  audit's cost as a share of a request's cost without audits (the whole federation's
  per-request CPU: the executor's daemon and node, the voters, the gossip). At 3 audits
  per request the federation's CPU per request grows by about 3 x this share
  (``b_over_a_cpu``: B / A per request, net of idle).
* ``audits_done``, ``audits_passed``, ``audits_failed``, ``audits_unavailable``,
  ``audits_skipped``, ``audits_expected`` (3 x requests): from the verdict events the four
  daemons signed (``GET /get_reputation_events`` per epoch) for phase B's requests; an
  honest federation fails none (each verdict other than pass: ``failed_samples``, with
  its detail). ``pass_details``: the passes by detail (the same text, or a different
  text within the tolerance). ``requests_audited_3_times``: requests with 3 verdicts.
  Fewer verdicts than audits performed means verdicts the federation refused:
* ``own_events_refused``: reputation events a daemon signed and its own intake refused,
  by ``type:reason``, from the daemons' logs over the whole run (0 expected; e.g.
  ``audit_verdict:wrong_epoch``: the auditor named another epoch for the request than
  the intake places it in).
* ``a_p50_ms`` / ``a_p99_ms``, ``b_p50_ms`` / ``b_p99_ms`` (and ``*_mean_ms``, ``*_max_ms``):
  request latency at the client, quote sent -> ``completed`` read (nearest rank; the poll
  interval is the resolution). Audits run in the node's low-priority lane, behind paid
  requests, so B's latency should not grow much; a generation already running is not
  preempted.
* ``a_other_cores``, ``b_other_cores``, ``idle_other_cores_*``: cores kept busy meanwhile
  by processes this bench did not start (/proc/stat less what it measured): above ~0.05
  another job shared the machine and skewed the figures (rerun).
* ``*_wall_s``: the phase's wall time; ``b_audit_tail_s``: from B's last request to its
  last audit; ``a_failures``, ``b_failures``: requests that did not complete (left out
  of every figure).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from benchlib import T0, checked, federation, log, parser, pct, run

from supernode.client import SupernodeClient
from supernode.crypto.keys import Identity
from supernode.devnet import ETH, LocalFederation, NodeSpec

TICKS = os.sysconf("SC_CLK_TCK")
AUDITORS = 3  # every other member audits a new member's request
MAX_NEW_TOKENS = 10
CREDITS_PER_REQUEST = 2_000  # bought per planned request: a tiny-model request costs less
SETTINGS = {  # the audit timers of tests/integration/test_reputation_faults.py
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
WORDS = "the river king map boy old town read book people water sun".split()


# -- CPU ----------------------------------------------------------------------------------
def _stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks: user + system + reaped children's) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def tree_cpu_s(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of processes and all their descendants."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, pids in roots.items():
        ticks, todo, seen = 0, list(pids), set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            ticks += stats[pid][1]
            todo += children.get(pid, [])
        out[name] = ticks / TICKS
    return out


def groups(fed: LocalFederation) -> dict[str, list[int]]:
    """The processes measured, by group (pids read now: a restart changes them)."""
    return {
        "daemons": [d.proc.pid for d in fed.daemons if d.proc is not None],
        "nodes": [p.pid for n in fed.nodes for p in n.processes],
        "anvil": [fed.anvil.proc.pid] if fed.anvil and fed.anvil.proc else [],
    }


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS  # less idle and iowait


class Meter:
    """CPU of the measured groups (and of this process) between start() and stop()."""

    def __init__(self, fed: LocalFederation):
        self.fed = fed

    def start(self) -> None:
        self.roots = groups(self.fed)
        self.cpu0, self.client0, self.t0 = tree_cpu_s(self.roots), time.process_time(), time.time()
        self.machine0 = machine_busy_s()

    def stop(self) -> dict[str, float]:
        cpu1, wall = tree_cpu_s(self.roots), time.time() - self.t0
        used = {k: cpu1[k] - self.cpu0[k] for k in cpu1}
        used["client"] = time.process_time() - self.client0
        used["total"] = used["daemons"] + used["nodes"]
        used["wall"] = wall
        ours = used["total"] + used["anvil"] + used["client"]
        used["other_cores"] = max(0.0, machine_busy_s() - self.machine0 - ours) / wall
        return used


# -- the federation's reads -----------------------------------------------------------------
def get(client: httpx.Client, url: str, path: str, **params: Any) -> Any:
    r = client.get(f"{url}{path}", params=params, timeout=10)
    r.raise_for_status()
    return r.json()


def chain_epoch(fed: LocalFederation, epoch_blocks: int) -> int:
    """The chain's epoch now: its head block // blocks per epoch (read from anvil, as the
    daemons read it; a daemon just started may not have read it yet)."""
    assert fed.anvil is not None
    return int(fed.anvil.rpc("eth_blockNumber"), 16) // epoch_blocks


def audit_counts(client: httpx.Client, fed: LocalFederation) -> Counter[str]:
    """supernode_audits_total by ``what``, summed over the daemons (since their start)."""
    from prometheus_client.parser import text_string_to_metric_families

    total: Counter[str] = Counter()
    for d in fed.daemons:
        text = client.get(f"{d.url}/metrics", timeout=10).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "supernode_audits_total":
                    total[s.labels["what"]] += int(s.value)
    return total


def next_sequence(client: httpx.Client, url: str, pack_id: str) -> int | None:
    r = client.get(f"{url}/check_credit_pack_balance/{pack_id}", timeout=10)
    return r.json()["next_sequence"] if r.status_code == 200 else None


def wait_for(fn: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.time() + timeout_s
    while not (got := fn()):
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
    return got


class Bench:
    def __init__(self, fed: LocalFederation, args: Any, out: dict[str, Any]):
        self.fed, self.args, self.out = fed, args, out
        self.http = httpx.Client()
        self.k = 0  # requests sent so far (prompt and executor rotate on it)
        self.model = fed.nodes[0].model

    def buy(self) -> None:
        assert self.fed.anvil is not None
        self.owner = Identity.generate()
        planned = 2 * (self.args.requests + self.args.warmup) + 8
        credits = CREDITS_PER_REQUEST * planned
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "anvil_setBalance",
            "params": [self.owner.address, hex(credits * 10**12 + 10 * ETH)],
        }
        if "error" in (data := self.http.post(self.fed.anvil.url, json=body).json()):
            raise RuntimeError(f"anvil_setBalance: {data['error']}")
        with SupernodeClient(self.fed.daemons[0].url, identity=self.owner) as c:
            self.pack = c.buy_credits(credits, self.fed.anvil.url, wait_s=60)["pack_id"]
        urls = [d.url for d in self.fed.daemons]
        wait_for(
            lambda: all(next_sequence(self.http, u, self.pack) is not None for u in urls),
            self.args.verify_timeout,
            "every daemon holds the pack",
        )
        log(f"setup: a pack of {credits} credits, held by every daemon")

    def request(self) -> tuple[str, float | None]:
        """One paid request (see the docstring): its id and latency in ms (None: failed)."""
        k, d = self.k, self.fed.daemons[self.k % len(self.fed.daemons)]
        self.k += 1
        prompt = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(4 + k % 5))
        params = {"max_new_tokens": MAX_NEW_TOKENS}
        with SupernodeClient(d.url, identity=self.owner) as c:
            c.node()  # the network's ids, asked once and untimed
            t = time.perf_counter()
            quote = c.validate_usage(self.pack, self.model, prompt, params, 10**9)["payload"]
            c.confirm_usage(quote)
            rid = quote["request_id"]
            deadline = time.time() + self.args.request_timeout
            status = None
            while time.time() < deadline:
                status = c.request_status(rid)["status"]
                if status in ("completed", "failed"):
                    break
                time.sleep(self.args.poll_s)
            ms = (time.perf_counter() - t) * 1000 if status == "completed" else None
            if ms is None:
                log(f"request {rid[:12]} at daemon {d.index}: {status}")
        seq = next_sequence(self.http, d.url, self.pack)
        wait_for(
            lambda: all(
                next_sequence(self.http, x.url, self.pack) == seq for x in self.fed.daemons
            ),
            self.args.verify_timeout,
            "the spend applied at every daemon",
        )
        return rid, ms

    def requests(self, n: int, what: str) -> tuple[list[str], list[float], int]:
        ids, lat, failed = [], [], 0
        for i in range(n):
            rid, ms = self.request()
            ids.append(rid)
            if ms is None:
                failed += 1
            else:
                lat.append(ms)
            if (i + 1) % 20 == 0 or i + 1 == n:
                log(f"{what}: {i + 1}/{n} requests, p50 so far {pct(lat, 50)} ms")
        return ids, lat, failed

    def idle(self, phase: str) -> dict[str, float]:
        """The processes' CPU (cores) with nothing to do, over --idle-s s."""
        m = Meter(self.fed)
        m.start()
        time.sleep(self.args.idle_s)
        used = m.stop()
        cores = {k: used[k] / used["wall"] for k in ("daemons", "nodes", "total")}
        self.out[f"idle_cores_{phase}"] = {k: round(v, 3) for k, v in cores.items()}
        self.out[f"idle_other_cores_{phase}"] = round(used["other_cores"], 3)
        log(f"idle ({phase}): {self.out[f'idle_cores_{phase}']} cores")
        return cores

    def report(
        self, phase: str, used: dict[str, float], idle: dict[str, float], lat: list[float]
    ) -> dict[str, float]:
        n = self.args.requests
        o = self.out
        net = {k: used[k] - idle[k] * used["wall"] for k in ("daemons", "nodes", "total")}
        o[f"{phase}_cpu_per_request_ms"] = {k: round(v * 1000 / n, 2) for k, v in net.items()}
        o[f"{phase}_raw_cpu_per_request_ms"] = {
            k: round(used[k] * 1000 / n, 2) for k in ("daemons", "nodes", "total")
        }
        o[f"{phase}_p50_ms"], o[f"{phase}_p99_ms"] = pct(lat, 50), pct(lat, 99)
        o[f"{phase}_mean_ms"] = round(statistics.fmean(lat), 2) if lat else None
        o[f"{phase}_max_ms"] = round(max(lat), 2) if lat else None
        o[f"{phase}_wall_s"] = round(used["wall"], 2)
        o[f"{phase}_anvil_cpu_ms"] = round(used["anvil"] * 1000, 1)
        o[f"{phase}_client_cpu_ms"] = round(used["client"] * 1000, 1)
        o[f"{phase}_other_cores"] = round(used["other_cores"], 3)
        log(
            f"phase {phase}: {o[f'{phase}_cpu_per_request_ms']} ms CPU per request (net of "
            f"idle), p50 {o[f'{phase}_p50_ms']} ms, p99 {o[f'{phase}_p99_ms']} ms"
        )
        return net

    # -- the phases ---------------------------------------------------------------------
    def phase_a(self) -> tuple[dict[str, float], list[str]]:
        a = self.args
        self.requests(a.warmup, "A warm-up")
        idle = self.idle("a")
        log(f"phase A (audits off): {a.requests} requests")
        m = Meter(self.fed)
        m.start()
        ids, lat, failed = self.requests(a.requests, "A")
        time.sleep(a.settle_s)
        used = m.stop()
        self.out["a_failures"] = failed
        return self.report("a", used, idle, lat), ids

    def restart_with_audits(self) -> None:
        """Every daemon restarted with audits on, one at a time, each just after an epoch
        boundary (it has revealed the last epoch's seed and committed the next one), so
        that a restart shorter than an epoch misses neither; then two more boundaries
        pass, so each holds a committed seed for the epoch in progress."""
        a, fed = self.args, self.fed
        epoch_s = a.epoch_blocks * a.block_time
        last = chain_epoch(fed, a.epoch_blocks)
        log(f"waiting for epoch {last} (phase A's last) to close")
        wait_for(
            lambda: chain_epoch(fed, a.epoch_blocks) >= last + 2,
            epoch_s * 4 + 30,
            "phase A's epochs closed",
            interval_s=0.2,
        )
        down = []
        for d in fed.daemons:
            now = chain_epoch(fed, a.epoch_blocks)
            wait_for(
                lambda now=now: chain_epoch(fed, a.epoch_blocks) > now,
                epoch_s * 2 + 30,
                "an epoch boundary",
                interval_s=0.1,
            )
            time.sleep(min(1.0, epoch_s / 4))  # the boundary's audit round: reveal, commit
            t = time.time()
            d.stop()
            d.env["SUPERNODE_AUDITS_ENABLED"] = "true"
            d.start()
            d.wait_ready()
            down.append(time.time() - t)
        self.out["restart_s"] = [round(x, 2) for x in down]
        log(f"daemons restarted with audits on, each down {self.out['restart_s']} s")
        ready = chain_epoch(fed, a.epoch_blocks)
        wait_for(
            lambda: chain_epoch(fed, a.epoch_blocks) >= ready + 2,
            epoch_s * 4 + 30,
            "two epochs after the restart",
            interval_s=0.2,
        )

    def wait_audits(self, target: int) -> float:
        """Until the daemons have done ``target`` audits, or stop doing any; the time."""
        a, start = self.args, time.time()
        done, grew_at = -1, time.time()
        while True:
            now_done = audit_counts(self.http, self.fed)["done"]
            if now_done != done:
                done, grew_at = now_done, time.time()
            if done >= target:
                break
            if time.time() - grew_at > a.audit_quiet_s:
                log(f"audits stopped at {done} of {target} for {a.audit_quiet_s} s")
                break
            if time.time() - start > a.audit_timeout:
                log(f"audits: {done} of {target} after --audit-timeout {a.audit_timeout} s")
                break
            time.sleep(0.25)
        return time.time()

    def phase_b(self) -> tuple[dict[str, float], list[str]]:
        a, o = self.args, self.out
        self.restart_with_audits()
        log(f"B warm-up: {a.warmup} requests, their audits waited for")
        self.requests(a.warmup, "B warm-up")
        self.wait_audits(AUDITORS * a.warmup)
        warm = audit_counts(self.http, self.fed)
        idle = self.idle("b")
        first_epoch = chain_epoch(self.fed, self.args.epoch_blocks)
        log(f"phase B (audits on): {a.requests} requests, {AUDITORS} audits each")
        m = Meter(self.fed)
        m.start()
        ids, lat, failed = self.requests(a.requests, "B")
        last_request = time.time()
        target = warm["done"] + AUDITORS * a.requests
        last_audit = self.wait_audits(target)
        time.sleep(a.settle_s)
        used = m.stop()
        after = audit_counts(self.http, self.fed)
        o["b_failures"] = failed
        o["b_audit_tail_s"] = round(last_audit - last_request, 2)
        o["audits_assigned"] = after["assigned"]
        o["audits_performed"] = after["done"] - warm["done"]
        self.b_epochs = (first_epoch, chain_epoch(self.fed, self.args.epoch_blocks))
        return self.report("b", used, idle, lat), ids

    def verdicts(self, ids: list[str]) -> None:
        """Phase B's verdicts, as signed by the four daemons (read at each signer)."""
        o, wanted = self.out, set(ids)
        found: list[dict[str, Any]] = []
        lo, hi = self.b_epochs
        for d in self.fed.daemons:
            for e in range(lo, hi + 1):
                sent = get(self.http, d.url, "/get_reputation_events", address=d.address, epoch=e)
                found += [
                    v
                    for v in sent["sent"]
                    if v["kind"] == "audit_verdict" and v["request_id"] in wanted
                ]
        by = Counter(v["value"] for v in found)
        o["audits_expected"] = AUDITORS * len(ids)
        o["audits_done"] = len(found)
        o["audits_passed"] = by.get("pass", 0)
        o["audits_failed"] = by.get("fail", 0)
        o["audits_unavailable"] = by.get("unavailable", 0)
        o["audits_skipped"] = by.get("skipped", 0)
        per_request = Counter(v["request_id"] for v in found)
        o["requests_audited_3_times"] = sum(1 for r in ids if per_request[r] == AUDITORS)
        details = Counter(v["payload"].get("detail", "") for v in found if v["value"] == "pass")
        o["pass_details"] = dict(details)
        fails = [v for v in found if v["value"] != "pass"]
        if fails:
            o["failed_samples"] = [
                {
                    "verdict": v["value"],
                    "auditor": v["sender"],
                    "executor": v["subject"],
                    "request_id": v["request_id"],
                    "position": v["payload"].get("position"),
                    "detail": v["payload"].get("detail"),
                }
                for v in fails[:5]
            ]
        log(
            f"verdicts: {len(found)} of {o['audits_expected']} ({dict(by)}); "
            f"{o['requests_audited_3_times']} requests audited {AUDITORS} times"
        )

    def refusals(self) -> None:
        """Reputation events the daemons signed and their own intake refused (their logs:
        ``<type> <id> refused here: <reason>: ...``), by type and reason."""
        found: Counter[str] = Counter()
        for d in self.fed.daemons:
            for line in d.log_path.read_text(errors="replace").splitlines():
                if " refused here: " in line and "audit: " in line:
                    kind = line.split("audit: ", 1)[1].split(" ", 1)[0]
                    reason = line.split(" refused here: ", 1)[1].split(":", 1)[0]
                    found[f"{kind}:{reason}"] += 1
        self.out["own_events_refused"] = dict(found)
        if found:
            log(f"events the daemons signed and refused: {dict(found)}")

    def run(self) -> None:
        self.buy()
        a_net, _ = self.phase_a()
        b_net, b_ids = self.phase_b()
        self.verdicts(b_ids)
        self.refusals()
        o, n = self.out, self.args.requests
        done = o["audits_performed"]
        if done:
            raw_a = o["a_raw_cpu_per_request_ms"]
            raw_b = o["b_raw_cpu_per_request_ms"]
            o["audit_cpu_per_audit_ms"] = {
                k: round((b_net[k] - a_net[k]) * 1000 / done, 2) for k in a_net
            }
            o["audit_cpu_per_audit_raw_ms"] = {
                k: round((raw_b[k] - raw_a[k]) * n / done, 2) for k in raw_a
            }
            base = o["a_cpu_per_request_ms"]["total"]
            if base > 0:
                o["audit_share_of_request"] = round(o["audit_cpu_per_audit_ms"]["total"] / base, 3)
                o["b_over_a_cpu"] = round(o["b_cpu_per_request_ms"]["total"] / base, 3)
        self.http.close()


def main() -> int:
    p = parser(__doc__)
    p.set_defaults(peers=4)
    p.add_argument("--requests", type=int, default=60, help="paid requests per phase")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests before each phase")
    p.add_argument("--block-time", type=int, default=1, help="seconds between anvil's blocks")
    p.add_argument("--epoch-blocks", type=int, default=5, help="blocks per epoch")
    p.add_argument("--idle-s", type=float, default=10.0, help="idle CPU window before a phase")
    p.add_argument("--settle-s", type=float, default=2.0, help="measured after a phase's end")
    p.add_argument("--poll-s", type=float, default=0.05, help="status poll interval (s)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="per request (s)")
    p.add_argument("--audit-quiet-s", type=float, default=20.0, help="no audit done this long")
    p.add_argument("--audit-timeout", type=float, default=300.0, help="bound of the audit wait")
    args = checked(p)
    if args.peers != 4:
        p.error("the layout is four daemons on two nodes: --peers must be 4")
    if min(args.requests, args.block_time, args.epoch_blocks) < 1 or args.warmup < 0:
        p.error("--requests, --block-time, --epoch-blocks must be >= 1, --warmup >= 0")

    head = ["a_cpu_per_request_ms", "b_cpu_per_request_ms", "audit_cpu_per_audit_ms"]
    head += ["audit_share_of_request", "audits_done", "audits_passed", "audits_failed"]
    head += ["a_p50_ms", "a_p99_ms", "b_p50_ms", "b_p99_ms"]
    out: dict[str, Any] = {"peers": args.peers, "requests": args.requests}
    out.update(dict.fromkeys(head))  # the report's key order; null if never measured
    settings = {**SETTINGS, "SUPERNODE_AUDITS_ENABLED": "false"}
    with federation(
        "bench-audit-",
        out,
        args.keep,
        peers=4,
        node_specs=[NodeSpec(), NodeSpec()],
        node_map={0: [0], 1: [0], 2: [1], 3: [1]},
        block_time=args.block_time,
        epoch_blocks=args.epoch_blocks,
        settings=settings,
    ) as fed:
        Bench(fed, args, out).run()
    out.update(
        block_time=args.block_time,
        epoch_blocks=args.epoch_blocks,
        warmup=args.warmup,
        max_new_tokens=MAX_NEW_TOKENS,
        cpu_count=os.cpu_count(),
    )
    out["wall_s"] = round(time.time() - T0, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run(main)
