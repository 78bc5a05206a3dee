"""OpenAI-gateway overhead benchmark: a supernode's /v1/completions against the same
petals-node called directly, on a local federation of real processes.

Run:  .venv/bin/python scripts/bench_gateway.py --requests 1000 --concurrency 16 [--keep]

It starts anvil, one `supernode petals-node` (a tiny random Llama) and ``--peers`` `supernode
run` daemons wired to it (supernode.devnet.LocalFederation) in a temporary folder, stops
everything it started (also on error, Ctrl-C or SIGTERM), and prints one JSON object as the
LAST line of stdout; progress goes to stderr.

Both paths send the same prompts (prompt ``i`` is the same text on both), greedy, with the
same ``--max-new-tokens``, through one HTTP client (aiohttp if installed, else httpx:
``--client``; keep-alive, same pool) with ``--concurrency`` closed-loop workers (each sends
its next request when its last one is answered):

* direct: ``POST {node}/api/v1/generate``, form ``model, inputs, max_new_tokens,
  do_sample=0`` (what the daemon itself sends the node); a success is 200 with ``ok`` true.
* gateway: ``POST {daemon}/v1/completions``, ``Authorization: Bearer <key>``, JSON ``{model,
  prompt, max_tokens}``; a success is 200 with a non-empty ``choices[0].text``. Per request the
  daemon quotes (a tokenize call to the node, the reservation read), writes the request
  durably, has the node generate and answers; the result, its summary and the request's
  charge are recorded right after, and the key's requests are certified afterwards, many
  to a settlement (every ``SUPERNODE_SETTLE_INTERVAL_S``). Every worker has its own pack
  and key (bought and delegated in setup, untimed).

Figures (latency = request sent -> whole answer read, at the client):

* ``direct_p50_ms`` / ``_p99_ms``, ``gateway_p50_ms`` / ``_p99_ms``: the main figures, every
  gateway worker on ONE daemon (daemon 0): one gateway's overhead. ``--requests`` requests
  per path, in ``--rounds`` rounds; each round runs a direct phase and a gateway phase of
  ``requests / rounds`` requests, the order swapped every round (D G, G D, D G, ...) so that
  a drift (caches, database growth) falls on both paths alike. After every phase the bench
  waits until the daemons and the node are quiet again (see ``*_settle_s_mean``), so no
  phase pays for the gossip another left behind. Percentiles are nearest-rank over all
  rounds' successes. ``overhead_p50_ms`` = gateway_p50 - direct_p50 (the same for
  p99). ``direct_rps`` / ``gateway_rps``: successes / summed phase wall time.
  The node runs one generation at a time (its worker thread), so at a concurrency above 1
  both latencies are mostly queueing at the node; whatever the gateway adds per request
  (its CPU on shared cores included) is multiplied by that queue.
* ``serial_*``: ``--serial`` prompts at concurrency 1, each sent directly then through the
  gateway (interleaved): the per-request overhead without any queue (the gossip a gateway
  request leaves behind may still run during the next direct one).
* ``gateway_server_timing_p50_ms``, ``serial_server_timing_p50_ms``: the p50 of each step
  of the daemon's Server-Timing header over the main and the serial gateway answers:
  ``prepare`` (parse, key, quote, the request written), ``generate`` (text back from the
  node), ``total``.
* ``spread_*``: ``--spread-requests`` more gateway requests with worker ``w`` on daemon ``w %
  peers`` (its own packs and keys), compared with the main direct figures
  (``spread_overhead_p50_ms`` = spread_gateway_p50 - direct_p50).
* ``{direct,gateway}_*_cpu_ms_per_request``: CPU (user + system, /proc) per request in the
  main phases, the work left after each phase included (up to quiet): ``daemons`` (all
  together), ``daemon0`` (the gateway), ``node`` (the petals-node), ``client`` (this process,
  the same client on both paths). ``*_host_cpu_busy``: the share of all the host's cores
  busy during the phases (1.0: the machine is the limit; everything here shares
  ``cpu_count`` cores); ``*_host_cpu_steal``: the share taken by the hypervisor (other
  guests: a noisy host makes every figure worse); ``*_other_cores``: cores kept busy
  meanwhile by processes this bench did not start (should be ~0; if not, the figures are
  disturbed). ``idle_cores``: what the daemons and the node use with no request;
  ``idle_other_cores``: other processes then (a warning on stderr above 0.2).
  ``*_{daemons,daemon0}_cpu_ms_per_request_net``: the same less what those processes use
  with no request at all (``idle_{daemons,daemon0}_cores``, membership and anti-entropy)
  over the time measured: what a request adds. In a short phase the idle part weighs a
  lot (a phase of 100 requests takes ~0.4 s, and waiting for quiet after it ~1.5 s).
* ``*_settle_s_mean``: after a phase, how long until the daemons and the node use under
  ``--quiet-cores`` above idle (two 0.5 s windows): the work a gateway phase leaves behind
  (gossip of certificates, result summaries, refunds; anti-entropy).
* ``outputs_match``: prompts whose gateway text equals their direct text (greedy: all should);
  ``outputs_compared``: how many were compared.
* ``credits_spent``: sum over every pack used of (bought - remaining) at the daemon that
  spent it, once every request is settled (polled up to ``--verify-timeout`` s);
  ``credits_expected``: the sum of the successes' ``usage`` at the model's prices
  (warm-up, serial and spread requests included); ``credits_match``: both agree.
* ``failures``: timed requests without success, both paths (``direct_failures``,
  ``gateway_failures``; samples in ``failure_samples``), left out of the latencies and not
  retried; a worker pauses ``--failure-backoff`` s after one, as a client would (a fast
  refusal must not drain a whole phase). A phase stops sending after ``--phase-timeout`` s
  (``requests_done`` says what was measured).

``--upstream fake`` puts a fast OpenAI-compatible server (``scripts/fake_upstream.py``,
no model: it answers at once) in place of the petals-node: every daemon has it as its only
node (``openai:URL``), and the direct path is ``POST {fake}/v1/completions`` with the same
JSON body as the gateway's. The figures are then the gateway's own cost: ``overhead_*``,
``gateway_rps`` and the ``*_cpu_ms_per_request`` (``node`` is the fake's CPU).

``--ttft N`` (default 50): N streamed requests, one at a time, each sent directly (the
node's own stream: WebSocket for the petals-node, SSE for the fake) then through the
gateway (``"stream": true``): ``ttft_{direct,gateway}_p50_ms`` / ``_p99_ms`` (request sent
-> first text received at the client) and ``ttft_overhead_p50_ms`` / ``_p99_ms``.

Before timing, ``--warmup`` requests per path (default 2 x concurrency) run untimed (the
gateway's on daemon 0 and, with a spread phase, on every daemon too).
``--node-cores N`` (default 0: off) pins the petals-node, every thread of it, to the last N
cores and everything else this bench started (daemons, anvil, this client) to the others:
the layout of a deployment, where the node runs on its own (GPU) machine and the
supernode's work does not slow the model down. On this 2-core machine the default layout
shares both cores, so at a concurrency above 1 the gateway's CPU is paid again in the
node's queue; ``node_cores`` in the report says which layout ran.

``--daemon-nice N`` (default 10, as in the devnet) is the daemons' ``SUPERNODE_CPU_NICE``:
on a shared host they yield the CPU to the model. With 0 the node's queue pays for every
millisecond the daemons take from it (``daemon_nice`` in the report).

``--audits off`` turns the members' audits off (``SUPERNODE_AUDITS_ENABLED=false``). With
them on, as deployed, every member audits a new executor's answers up to
``SUPERNODE_AUDIT_MAX_PER_MINUTE`` (120) each: fetching the result, running it again on its
node, signing a verdict that every member checks. That work is bounded per minute, not per
request, so it weighs on a short phase's CPU figures (a few hundred requests) far more than
on a long one's; ``off`` shows the gateway's own cost (``audits`` in the report).

``--py-spy BIN`` records daemon ``--py-spy-daemon`` (default 0) with py-spy (``--format
raw``, folded stacks) during the first main gateway phase into ``--py-spy-out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchlib import T0, checked, federation, log, parser, pct, run

from supernode.client import SupernodeClient
from supernode.credits.orders import reservation_id
from supernode.crypto.keys import Identity
from supernode.devnet import DAEMON_NICE, ETH, LocalFederation
from supernode.inference.openai import decode_api_key
from supernode.local_nodes import FakeUpstream

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven red kites circle above an old "
    "stone bridge near the quiet river and children count boats drifting toward the sea"
).split()


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def parse_timing(header: str) -> dict[str, float]:
    """``prepare;dur=1.2, generate;dur=5.0`` -> {"prepare": 1.2, "generate": 5.0}."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            out[name] = float(dur)
    return out


def timing_p50(timings: list[dict[str, float]]) -> dict[str, float | None]:
    """The p50 of each Server-Timing step over a phase's gateway answers."""
    names = sorted({k for t in timings for k in t})
    return {k: pct([t[k] for t in timings if k in t], 50) for k in names}


def prompt(i: int) -> str:
    """Prompt ``i``: a distinct, deterministic sentence of 8-15 words."""
    n = 8 + i % 8
    return f"request {i}: " + " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def host_cpu_s() -> dict[str, float]:
    """Busy, stolen (by the hypervisor) and total CPU seconds of the whole host, all cores
    (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]  # not idle, iowait or steal
    return {"host_busy": busy / hz, "host_steal": ticks[7] / hz, "host_total": sum(ticks) / hz}


# -- one HTTP client for both paths ------------------------------------------------------
class Http:
    """POST with a form or a JSON body; returns (status, parsed JSON or None, text)."""

    async def post(
        self,
        url: str,
        *,
        form: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 120.0,
    ) -> tuple[int, Any, str, str]:
        """(status, JSON or None, the text if not JSON, the Server-Timing header)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _parse(raw: bytes) -> tuple[Any, str]:
        try:
            return json.loads(raw), ""
        except ValueError:
            return None, raw[:300].decode(errors="replace")


class AiohttpHttp(Http):
    def __init__(self, conns: int) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns))

    async def post(
        self,
        url: str,
        *,
        form: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 120.0,
    ) -> tuple[int, Any, str, str]:
        data = {k: str(v) for k, v in form.items()} if form is not None else None
        async with self.s.post(
            url,
            data=data,
            json=body,
            headers=headers,
            timeout=self.aiohttp.ClientTimeout(total=limit_s),
        ) as r:
            raw = await r.read()
            return (r.status, *self._parse(raw), r.headers.get("server-timing", ""))

    async def close(self) -> None:
        await self.s.close()


class HttpxHttp(Http):
    def __init__(self, conns: int) -> None:
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        self.c = httpx.AsyncClient(limits=limits)

    async def post(
        self,
        url: str,
        *,
        form: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 120.0,
    ) -> tuple[int, Any, str, str]:
        data = {k: str(v) for k, v in form.items()} if form is not None else None
        r = await self.c.post(url, data=data, json=body, headers=headers, timeout=limit_s)
        timing = r.headers.get("server-timing", "")
        return (r.status_code, *self._parse(r.content), timing)

    async def close(self) -> None:
        await self.c.aclose()


def make_http(kind: str, conns: int) -> Http:
    if kind == "auto":
        try:
            import aiohttp  # noqa: F401

            kind = "aiohttp"
        except ImportError:
            kind = "httpx"
    return AiohttpHttp(conns) if kind == "aiohttp" else HttpxHttp(conns)


# -- the benchmark -----------------------------------------------------------------------
@dataclass
class Key:
    daemon: int
    pack_id: str
    key: str
    credits: int


@dataclass
class PhaseResult:
    lat_ms: list[float] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    sent: int = 0


class Bench:
    def __init__(
        self,
        fed: LocalFederation,
        args: argparse.Namespace,
        out: dict[str, Any],
        fake: FakeUpstream | None = None,
    ):
        self.fed, self.args, self.out = fed, args, out
        self.fake = fake
        self.node: Any = fake if fake is not None else fed.nodes[0]
        self.model = self.node.model
        self.http: Http | None = None  # made in go(), inside the event loop
        self.texts: dict[str, dict[int, str]] = {"direct": {}, "gateway": {}}
        self.timings: list[dict[str, float]] = []  # Server-Timing of gateway answers
        self.usage_cost = 0  # credits the successful gateway requests cost (from usage)
        self.price = (1, 2)  # credits per input token, per output token (from the menu)
        self.idle_cores = 0.0  # measured in run()
        self.idle_rate: dict[str, float] = {}

    # -- setup ---------------------------------------------------------------------------
    async def buy_keys(self, daemons: list[int]) -> list[Key]:
        """One fresh owner, pack and API key per entry of ``daemons`` (the daemon the key
        delegates to); purchases ``--setup-concurrency`` at a time, untimed."""
        anvil = self.fed.anvil
        assert anvil is not None
        owners = [Identity.generate() for _ in daemons]
        async with httpx.AsyncClient(timeout=10) as c:
            for o in owners:  # funded by anvil_setBalance: no block, no nonce race
                body = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "anvil_setBalance",
                    "params": [o.address, hex(100 * ETH)],
                }
                if "error" in (data := (await c.post(anvil.url, json=body)).json()):
                    raise RuntimeError(f"anvil_setBalance: {data['error']}")
        credits = self.args.credits

        def one(i: int) -> Key:
            d = self.fed.daemons[daemons[i]]
            with SupernodeClient(d.url, identity=owners[i]) as c:
                pack = c.buy_credits(credits, anvil.url, wait_s=60)
                key = c.delegate(pack["pack_id"], max_credits=credits, expires_in_s=3600)
            # the key spends from its reservation: the pack of its credits
            reserved = reservation_id(pack["pack_id"], decode_api_key(key)["id"])
            return Key(daemons[i], reserved, key, credits)

        sem = asyncio.Semaphore(self.args.setup_concurrency)

        async def guarded(i: int) -> Key:
            async with sem:
                return await asyncio.to_thread(one, i)

        return list(await asyncio.gather(*(guarded(i) for i in range(len(daemons)))))

    async def wait_packs(self, keys: list[Key]) -> None:
        """Each key's daemon must know its pack with the full balance."""
        deadline = time.perf_counter() + self.args.verify_timeout
        pending = list(keys)
        async with httpx.AsyncClient(timeout=10) as c:
            while pending:
                left = []
                for k in pending:
                    r = await c.get(
                        f"{self.fed.daemons[k.daemon].url}/check_credit_pack_balance/{k.pack_id}"
                    )
                    if r.status_code != 200 or r.json().get("remaining_credits") != k.credits:
                        left.append(k)
                pending = left
                if pending and time.perf_counter() > deadline:
                    raise TimeoutError(f"{len(pending)} packs unknown at their daemon")
                if pending:
                    await asyncio.sleep(0.2)

    async def prices(self) -> None:
        """The model's prices; first waits until every daemon has it on its menu (its last
        health check of the node passed), at most ``--verify-timeout`` s."""
        deadline = time.perf_counter() + self.args.verify_timeout
        async with httpx.AsyncClient(timeout=10) as c:
            for d in self.fed.daemons:
                while True:
                    r = await c.get(f"{d.url}/get_inference_model_menu")
                    r.raise_for_status()
                    menu = {m["model"]: m for m in r.json()["models"]}
                    if self.model in menu:
                        break
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"{self.model} not on daemon {d.index}'s menu: {menu}")
                    await asyncio.sleep(0.25)
        p = menu[self.model]
        self.price = (p["credits_per_input_token"], p["credits_per_output_token"])

    # -- one request on each path --------------------------------------------------------
    async def direct(self, i: int) -> tuple[bool, str]:
        if self.fake is not None:
            status, data, text, _ = await self.http.post(
                f"{self.node.url}/v1/completions", body=self.completion(i)
            )
            if status == 200 and isinstance(data, dict):
                self.texts["direct"][i] = data["choices"][0]["text"]
                return True, ""
            return False, f"HTTP {status}: {str(data)[:300] if data is not None else text}"
        status, data, text, _ = await self.http.post(
            f"{self.node.url}/api/v1/generate",
            form={
                "model": self.model,
                "inputs": prompt(i),
                "max_new_tokens": self.args.max_new_tokens,
                "do_sample": 0,
            },
        )
        if status == 200 and isinstance(data, dict) and data.get("ok") is True:
            self.texts["direct"][i] = data.get("outputs", "")
            return True, ""
        return False, f"HTTP {status}: {str(data)[:300] if data is not None else text}"

    async def gateway(self, i: int, key: Key) -> tuple[bool, str]:
        status, data, text, timing = await self.http.post(
            f"{self.fed.daemons[key.daemon].url}/v1/completions",
            body=self.completion(i),
            headers={"Authorization": f"Bearer {key.key}"},
        )
        if status == 200 and isinstance(data, dict):
            choices = data.get("choices") or [{}]
            out = choices[0].get("text")
            if isinstance(out, str) and out:
                u = data["usage"]
                self.usage_cost += (
                    u["prompt_tokens"] * self.price[0] + u["completion_tokens"] * self.price[1]
                )
                self.texts["gateway"][i] = out
                self.timings.append(parse_timing(timing))
                return True, ""
        return False, f"HTTP {status}: {str(data)[:300] if data is not None else text}"

    def completion(self, i: int) -> dict[str, Any]:
        """The JSON body of prompt ``i`` on an OpenAI completions API (the gateway's, the
        fake's)."""
        return {"model": self.model, "prompt": prompt(i), "max_tokens": self.args.max_new_tokens}

    # -- time to first token -------------------------------------------------------------
    async def first_text_ms(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> float:
        """Send a streamed completion; ms until the first event with text (the rest is read
        to the end)."""
        t0 = time.perf_counter()
        first: float | None = None
        async with httpx.AsyncClient(timeout=60) as c:
            async with c.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data:") and '"text": "' in line:
                        if '"text": ""' not in line:
                            first = (time.perf_counter() - t0) * 1000
                    if line.startswith("data:") and '"usage": {' in line:  # the gateway's
                        u = json.loads(line[5:])["usage"]
                        self.usage_cost += (
                            u["prompt_tokens"] * self.price[0]
                            + u["completion_tokens"] * self.price[1]
                        )
        if first is None:
            raise RuntimeError("the stream had no text")
        return first

    async def direct_ttft_ms(self, i: int) -> float:
        if self.fake is not None:
            body = {
                "model": self.model,
                "prompt": prompt(i),
                "max_tokens": self.args.max_new_tokens,
            }
            return await self.first_text_ms(f"{self.node.url}/v1/completions", body, {})
        import aiohttp

        t0 = time.perf_counter()
        ws_url = self.node.url.replace("http://", "ws://") + "/api/v2/generate"
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url) as ws:
            await ws.send_json(
                {"type": "open_inference_session", "model": self.model, "max_length": 512}
            )
            await ws.receive_json(timeout=60)
            await ws.send_json(
                {
                    "type": "generate",
                    "inputs": prompt(i),
                    "max_new_tokens": self.args.max_new_tokens,
                    "do_sample": 0,
                }
            )
            first = None
            while True:
                msg = await ws.receive_json(timeout=60)
                if first is None and msg.get("outputs"):
                    first = (time.perf_counter() - t0) * 1000
                if msg.get("stop") or not msg.get("ok", True):
                    break
        if first is None:
            raise RuntimeError("the node's stream had no text")
        return first

    async def ttft(self, indexes: list[int], key: Key) -> None:
        """Streamed requests one at a time, direct then gateway: time to the first text."""
        o = self.out
        direct: list[float] = []
        gateway: list[float] = []
        url = f"{self.fed.daemons[key.daemon].url}/v1/completions"
        for i in indexes:
            direct.append(await self.direct_ttft_ms(i))
            auth = {"Authorization": f"Bearer {key.key}"}
            body = {**self.completion(i), "stream_options": {"include_usage": True}}
            gateway.append(await self.first_text_ms(url, body, auth))
        o["ttft_requests"] = len(indexes)
        o["ttft_direct_p50_ms"], o["ttft_direct_p99_ms"] = pct(direct, 50), pct(direct, 99)
        o["ttft_gateway_p50_ms"], o["ttft_gateway_p99_ms"] = pct(gateway, 50), pct(gateway, 99)
        o["ttft_overhead_p50_ms"] = diff(o["ttft_gateway_p50_ms"], o["ttft_direct_p50_ms"])
        o["ttft_overhead_p99_ms"] = diff(o["ttft_gateway_p99_ms"], o["ttft_direct_p99_ms"])
        log(
            f"ttft: direct p50 {o['ttft_direct_p50_ms']} ms, gateway p50 "
            f"{o['ttft_gateway_p50_ms']} ms, overhead p50 {o['ttft_overhead_p50_ms']} ms"
        )

    # -- a closed-loop phase -------------------------------------------------------------
    async def phase(
        self,
        indices: list[int],
        workers: int,
        send: Callable[[int, int], Awaitable[tuple[bool, str]]],
    ) -> PhaseResult:
        """``workers`` loops, each taking the next index and waiting for its answer;
        ``send(worker, index)``. Stops taking new ones after ``--phase-timeout`` s."""
        res = PhaseResult()
        queue = list(reversed(indices))
        deadline = time.perf_counter() + self.args.phase_timeout

        async def worker(w: int) -> None:
            while queue and time.perf_counter() < deadline:
                i = queue.pop()
                res.sent += 1
                t = time.perf_counter()
                try:
                    ok, detail = await send(w, i)
                except Exception as exc:  # httpx or aiohttp errors, timeouts, bad JSON
                    ok, detail = False, repr(exc)[:300]
                ms = (time.perf_counter() - t) * 1000
                if ok:
                    res.lat_ms.append(ms)
                else:
                    res.failures.append({"request": i, "detail": detail})
                    # as a client would: a fast refusal must not drain the whole phase
                    await asyncio.sleep(self.args.failure_backoff)

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        res.wall_s = time.perf_counter() - start
        return res

    def cpu(self) -> dict[str, float]:
        d, anvil = self.fed.daemons, self.fed.anvil
        return {
            "daemons": sum(proc_cpu_s(x.proc.pid) for x in d if x.proc),
            "daemon0": proc_cpu_s(d[0].proc.pid) if d[0].proc else 0.0,
            "node": proc_cpu_s(self.node.proc.pid) if self.node.proc else 0.0,
            "anvil": proc_cpu_s(anvil.proc.pid) if anvil and anvil.proc else 0.0,
            "client": sum(os.times()[:2]),
            **host_cpu_s(),
        }

    async def settle(self) -> float:
        """Wait until the daemons and the node are quiet: under ``--quiet-cores`` of CPU
        (above the idle level measured at the start) over two 0.5 s windows in a row, at
        most ``--settle-timeout`` s; returns the seconds waited. Gossip of certificates,
        result summaries and refunds goes on after a gateway phase: the next phase must
        not pay for it."""
        start = time.perf_counter()
        quiet, prev, t_prev = 0, self.cpu(), start
        while quiet < 2 and time.perf_counter() - start < self.args.settle_timeout:
            await asyncio.sleep(0.5)
            cur, t = self.cpu(), time.perf_counter()
            used = (cur["daemons"] + cur["node"] - prev["daemons"] - prev["node"]) / (t - t_prev)
            quiet = quiet + 1 if used < self.idle_cores + self.args.quiet_cores else 0
            prev, t_prev = cur, t
        return time.perf_counter() - start

    async def measure_idle(self) -> None:
        """CPU the daemons and the node use with no request (membership, anti-entropy)."""
        c0, t0 = self.cpu(), time.perf_counter()
        await asyncio.sleep(2.0)
        c1, t1 = self.cpu(), time.perf_counter()
        busy = c1["daemons"] + c1["node"] - c0["daemons"] - c0["node"]
        self.idle_cores = busy / (t1 - t0)
        # each figure's own idle rate, taken off its *_net figures
        self.idle_rate = {k: (c1[k] - c0[k]) / (t1 - t0) for k in ("daemons", "daemon0")}
        o = self.out
        o["idle_daemons_cores"] = round(self.idle_rate["daemons"], 3)
        o["idle_daemon0_cores"] = round(self.idle_rate["daemon0"], 3)
        self.out["idle_cores"] = round(self.idle_cores, 3)
        ours = sum(c1[k] - c0[k] for k in ("daemons", "node", "anvil", "client"))
        other = max(0.0, c1["host_busy"] - c0["host_busy"] - ours) / (t1 - t0)
        self.out["idle_other_cores"] = round(other, 3)
        if other > 0.2:
            log(f"WARNING: {other:.2f} cores busy with other processes: the figures will suffer")

    # -- the run -------------------------------------------------------------------------
    async def run(self, main_keys: list[Key], spread_keys: list[Key]) -> None:
        a, o = self.args, self.out
        conc = a.concurrency
        next_index = 0

        def take(n: int) -> list[int]:
            nonlocal next_index
            idx = list(range(next_index, next_index + n))
            next_index += n
            return idx

        def gw(keys: list[Key]) -> Callable[[int, int], Awaitable[tuple[bool, str]]]:
            return lambda w, i: self.gateway(i, keys[w % len(keys)])

        async def direct(w: int, i: int) -> tuple[bool, str]:
            return await self.direct(i)

        await self.settle()  # the purchases' gossip
        await self.measure_idle()
        log(f"idle: the daemons and the node use {self.idle_cores:.3f} cores with no request")
        warm = a.warmup if a.warmup is not None else 2 * conc
        if warm:
            log(f"warm-up: {warm} requests per path, {conc} in flight (untimed)")
            idx = take(warm)
            wd = await self.phase(idx, conc, direct)
            wg = await self.phase(idx, conc, gw(main_keys))
            if spread_keys:  # every daemon serves a few before the spread phase
                wg.failures += (await self.phase(idx, conc, gw(spread_keys))).failures
            if wd.failures or wg.failures:
                log(f"warm-up failures: {json.dumps((wd.failures + wg.failures)[:3])}")
            await self.settle()

        if a.serial:
            log(f"serial: {a.serial} prompts, one at a time, direct then gateway")
            sd, sg = PhaseResult(), PhaseResult()
            self.timings = []
            for i in take(a.serial):
                for res, send in ((sd, direct), (sg, gw(main_keys))):
                    r = await self.phase([i], 1, send)
                    res.lat_ms += r.lat_ms
                    res.failures += r.failures
            o["serial_requests"] = a.serial
            o["serial_direct_p50_ms"] = pct(sd.lat_ms, 50)
            o["serial_gateway_p50_ms"] = pct(sg.lat_ms, 50)
            o["serial_overhead_p50_ms"] = diff(
                o["serial_gateway_p50_ms"], o["serial_direct_p50_ms"]
            )
            o["serial_direct_p99_ms"] = pct(sd.lat_ms, 99)
            o["serial_gateway_p99_ms"] = pct(sg.lat_ms, 99)
            o["serial_overhead_p99_ms"] = diff(
                o["serial_gateway_p99_ms"], o["serial_direct_p99_ms"]
            )
            o["serial_failures"] = len(sd.failures) + len(sg.failures)
            o["serial_server_timing_p50_ms"] = timing_p50(self.timings)
            await self.settle()
            log(
                f"serial: direct p50 {o['serial_direct_p50_ms']} ms, gateway p50 "
                f"{o['serial_gateway_p50_ms']} ms, overhead p50 {o['serial_overhead_p50_ms']} ms"
            )

        if a.ttft:
            log(f"ttft: {a.ttft} streamed prompts, one at a time, direct then gateway")
            await self.ttft(take(a.ttft), main_keys[0])
            await self.settle()

        # main: all gateway workers on daemon 0, alternating rounds
        per_round = [a.requests // a.rounds + (r < a.requests % a.rounds) for r in range(a.rounds)]
        tot = {"direct": PhaseResult(), "gateway": PhaseResult()}
        cpu_keys = ("daemons", "daemon0", "node", "anvil", "client")
        cpu_keys += ("host_busy", "host_steal", "host_total", "other")
        cpu_tot = {p: dict.fromkeys(cpu_keys, 0.0) for p in tot}
        settle_s: dict[str, list[float]] = {p: [] for p in tot}
        measured_s = dict.fromkeys(tot, 0.0)  # from a phase's start to quiet after it
        log(
            f"main: {a.requests} requests per path, {conc} in flight, {a.rounds} rounds, "
            f"gateway = daemon 0, max_new_tokens {a.max_new_tokens}"
        )
        spy: subprocess.Popen[bytes] | None = None
        self.timings = []
        for r, n in enumerate(per_round):
            idx = take(n)
            order = ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]
            for path in order:
                if path == "gateway" and a.py_spy and spy is None:
                    spy = self.start_py_spy()
                c0, t0 = self.cpu(), time.perf_counter()
                res = await self.phase(idx, conc, direct if path == "direct" else gw(main_keys))
                c_end = self.cpu()
                if spy is not None and spy.poll() is None:
                    spy.send_signal(signal.SIGINT)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        spy.wait(timeout=30)
                settle_s[path].append(await self.settle())
                c1 = self.cpu()  # the processes' CPU includes the work left after the phase
                measured_s[path] += time.perf_counter() - t0
                for k in ("daemons", "daemon0", "node", "client"):
                    cpu_tot[path][k] += c1[k] - c0[k]
                for k in ("host_busy", "host_steal", "host_total"):  # during the phase itself
                    cpu_tot[path][k] += c_end[k] - c0[k]
                ours = ("daemons", "node", "anvil", "client")
                cpu_tot[path]["other"] += c_end["host_busy"] - c0["host_busy"]
                cpu_tot[path]["other"] -= sum(c_end[k] - c0[k] for k in ours)
                t = tot[path]
                t.lat_ms += res.lat_ms
                t.failures += res.failures
                t.wall_s += res.wall_s
                t.sent += res.sent
                log(
                    f"round {r + 1}/{a.rounds} {path:7}: {res.sent} sent in {res.wall_s:.2f} s, "
                    f"p50 {pct(res.lat_ms, 50)} ms p99 {pct(res.lat_ms, 99)} ms, "
                    f"{len(res.failures)} failed; quiet {settle_s[path][-1]:.1f} s later"
                )
        d, g = tot["direct"], tot["gateway"]
        o["direct_p50_ms"], o["direct_p99_ms"] = pct(d.lat_ms, 50), pct(d.lat_ms, 99)
        o["gateway_p50_ms"], o["gateway_p99_ms"] = pct(g.lat_ms, 50), pct(g.lat_ms, 99)
        o["overhead_p50_ms"] = diff(o["gateway_p50_ms"], o["direct_p50_ms"])
        o["overhead_p99_ms"] = diff(o["gateway_p99_ms"], o["direct_p99_ms"])
        o["gateway_server_timing_p50_ms"] = timing_p50(self.timings)
        o["failures"] = len(d.failures) + len(g.failures)
        o["direct_rps"] = round(len(d.lat_ms) / d.wall_s, 2) if d.wall_s else None
        o["gateway_rps"] = round(len(g.lat_ms) / g.wall_s, 2) if g.wall_s else None
        o["direct_failures"], o["gateway_failures"] = len(d.failures), len(g.failures)
        o["requests_done"] = {"direct": d.sent, "gateway": g.sent}
        o["direct_mean_ms"] = round(statistics.fmean(d.lat_ms), 2) if d.lat_ms else None
        o["gateway_mean_ms"] = round(statistics.fmean(g.lat_ms), 2) if g.lat_ms else None
        o["direct_max_ms"] = round(max(d.lat_ms), 2) if d.lat_ms else None
        o["gateway_max_ms"] = round(max(g.lat_ms), 2) if g.lat_ms else None
        for path, t in tot.items():
            n = max(1, t.sent)
            o[f"{path}_daemons_cpu_ms_per_request"] = round(cpu_tot[path]["daemons"] * 1000 / n, 2)
            o[f"{path}_node_cpu_ms_per_request"] = round(cpu_tot[path]["node"] * 1000 / n, 2)
            o[f"{path}_client_cpu_ms_per_request"] = round(cpu_tot[path]["client"] * 1000 / n, 2)
            o[f"{path}_daemon0_cpu_ms_per_request"] = round(cpu_tot[path]["daemon0"] * 1000 / n, 2)
            for k in ("daemons", "daemon0"):  # less what they use with no request at all
                net = cpu_tot[path][k] - self.idle_rate.get(k, 0.0) * measured_s[path]
                o[f"{path}_{k}_cpu_ms_per_request_net"] = round(net * 1000 / n, 2)
            busy, total = cpu_tot[path]["host_busy"], cpu_tot[path]["host_total"]
            o[f"{path}_host_cpu_busy"] = round(busy / total, 3) if total else None
            steal = cpu_tot[path]["host_steal"]
            o[f"{path}_host_cpu_steal"] = round(steal / total, 3) if total else None
            # cores busy with processes this bench did not start (other work on the host)
            o[f"{path}_other_cores"] = (
                round(max(0.0, cpu_tot[path]["other"]) / t.wall_s, 3) if t.wall_s else None
            )
        for path, v in settle_s.items():
            o[f"{path}_settle_s_mean"] = round(statistics.fmean(v), 2) if v else None
        if d.failures or g.failures:
            o["failure_samples"] = (d.failures[:3] + g.failures[:3])[:5]
            log(f"main: {o['failures']} FAILED, e.g. {json.dumps(o['failure_samples'][:3])}")
        log(
            f"main: direct p50 {o['direct_p50_ms']} p99 {o['direct_p99_ms']} ms "
            f"({o['direct_rps']}/s); gateway p50 {o['gateway_p50_ms']} p99 "
            f"{o['gateway_p99_ms']} ms ({o['gateway_rps']}/s); overhead p50 "
            f"{o['overhead_p50_ms']} ms p99 {o['overhead_p99_ms']} ms"
        )

        if a.spread_requests and spread_keys:
            peers = len(self.fed.daemons)
            await self.prices()  # every daemon has the model on its menu again
            log(f"spread: {a.spread_requests} gateway requests, worker w on daemon w % {peers}")
            c0 = self.cpu()
            s = await self.phase(take(a.spread_requests), conc, gw(spread_keys))
            c1 = self.cpu()
            n = max(1, s.sent)
            o["spread_daemons_cpu_ms_per_request"] = round(
                (c1["daemons"] - c0["daemons"]) * 1000 / n, 2
            )
            total = c1["host_total"] - c0["host_total"]
            busy = c1["host_busy"] - c0["host_busy"]
            steal = c1["host_steal"] - c0["host_steal"]
            o["spread_host_cpu_busy"] = round(busy / total, 3) if total else None
            o["spread_host_cpu_steal"] = round(steal / total, 3) if total else None
            o["spread_requests"] = s.sent
            o["spread_gateway_p50_ms"] = pct(s.lat_ms, 50)
            o["spread_gateway_p99_ms"] = pct(s.lat_ms, 99)
            o["spread_overhead_p50_ms"] = diff(o["spread_gateway_p50_ms"], o["direct_p50_ms"])
            o["spread_overhead_p99_ms"] = diff(o["spread_gateway_p99_ms"], o["direct_p99_ms"])
            o["spread_gateway_rps"] = round(len(s.lat_ms) / s.wall_s, 2) if s.wall_s else None
            o["spread_failures"] = len(s.failures)
            if s.failures:
                log(f"spread: {len(s.failures)} FAILED, e.g. {json.dumps(s.failures[:3])}")
            log(
                f"spread: p50 {o['spread_gateway_p50_ms']} ms p99 {o['spread_gateway_p99_ms']} "
                f"ms ({o['spread_gateway_rps']}/s)"
            )

        both = set(self.texts["direct"]) & set(self.texts["gateway"])
        o["outputs_compared"] = len(both)
        o["outputs_match"] = sum(self.texts["direct"][i] == self.texts["gateway"][i] for i in both)
        await self.check_credits(main_keys + spread_keys)

    async def check_credits(self, keys: list[Key]) -> None:
        """Balances at each key's daemon, polled until they account for every success's
        usage (the key's requests are settled in batches) or ``--verify-timeout``."""
        o = self.out
        o["credits_expected"] = self.usage_cost
        start = time.perf_counter()
        async with httpx.AsyncClient(timeout=10) as c:
            while True:
                spent = 0
                for k in keys:
                    r = await c.get(
                        f"{self.fed.daemons[k.daemon].url}/check_credit_pack_balance/{k.pack_id}"
                    )
                    r.raise_for_status()
                    spent += k.credits - r.json()["remaining_credits"]
                if (
                    spent == self.usage_cost
                    or time.perf_counter() - start > self.args.verify_timeout
                ):
                    break
                await asyncio.sleep(0.25)
        o["credits_spent"] = spent
        o["credits_match"] = spent == self.usage_cost
        o["credits_settle_s"] = round(time.perf_counter() - start, 3)
        log(f"credits: spent {spent}, usage says {self.usage_cost}")

    def start_py_spy(self) -> subprocess.Popen[bytes] | None:
        n = self.args.py_spy_daemon
        d = self.fed.daemons[n]
        if d.proc is None:
            return None
        out = Path(self.args.py_spy_out).resolve()
        log(f"py-spy: recording daemon {n} (pid {d.proc.pid}) into {out}")
        return subprocess.Popen(
            [self.args.py_spy, "record", "--pid", str(d.proc.pid), "--rate", "250",
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def go(self) -> None:
        """Setup (packs and keys, untimed), then every phase; the client closed at the end."""
        a = self.args
        self.http = make_http(a.client, max(64, 2 * a.concurrency))
        self.out["client"] = type(self.http).__name__.removesuffix("Http").lower()
        try:
            t = time.perf_counter()
            main_daemons = [0] * a.concurrency
            spread_daemons = (
                [w % a.peers for w in range(a.concurrency)] if a.spread_requests else []
            )
            log(f"setup: buying and delegating {len(main_daemons) + len(spread_daemons)} packs")
            keys = await self.buy_keys(main_daemons + spread_daemons)
            await self.prices()
            await self.wait_packs(keys)
            self.out["setup_s"] = round(time.perf_counter() - t, 2)
            log(f"setup: {self.out['setup_s']} s")
            await self.run(keys[: a.concurrency], keys[a.concurrency :])
        finally:
            await self.http.close()


def pin(pid: int, cores: set[int]) -> None:
    """Pin every thread of process ``pid`` (threads made later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cores)


def pin_node(fed: LocalFederation, n: int) -> None:
    """The petals-node on the last ``n`` cores, the rest of the bench on the others."""
    cores = sorted(os.sched_getaffinity(0))
    if not 0 < n < len(cores):
        raise SystemExit(f"--node-cores must be between 1 and {len(cores) - 1} here")
    node_cores, rest = set(cores[-n:]), set(cores[:-n])
    for node in fed.nodes:
        if node.proc:
            pin(node.proc.pid, node_cores)
    for d in fed.daemons:
        if d.proc:
            pin(d.proc.pid, rest)
    if fed.anvil and fed.anvil.proc:
        pin(fed.anvil.proc.pid, rest)
    pin(os.getpid(), rest)
    log(f"pinned: petals-node on cores {sorted(node_cores)}, the rest on {sorted(rest)}")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=1000, help="timed requests per path")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (workers)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4, help="direct/gateway alternations")
    p.add_argument("--warmup", type=int, default=None, help="untimed per path (2 x concurrency)")
    p.add_argument("--serial", type=int, default=50, help="prompts at concurrency 1 (0: none)")
    p.add_argument("--spread-requests", type=int, default=200, help="gateway over all (0: none)")
    p.add_argument("--credits", type=int, default=200_000, help="credits per pack")
    p.add_argument("--setup-concurrency", type=int, default=4, help="purchases in flight")
    p.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="seconds per phase")
    p.add_argument("--failure-backoff", type=float, default=0.5, help="worker pause (s)")
    p.add_argument("--settle-timeout", type=float, default=20.0, help="quiet wait bound (s)")
    p.add_argument("--quiet-cores", type=float, default=0.1, help="quiet: CPU over idle")
    p.add_argument("--node-cores", type=int, default=0, help="pin the node to N cores (0: off)")
    p.add_argument(
        "--daemon-nice", type=int, default=DAEMON_NICE, help="the daemons' SUPERNODE_CPU_NICE"
    )
    p.add_argument(
        "--upstream",
        choices=("petals", "fake"),
        default="petals",
        help="the node: a petals-node with the tiny model, or a fast fake (the gateway's cost)",
    )
    p.add_argument("--ttft", type=int, default=50, help="streamed prompts for TTFT (0: none)")
    p.add_argument("--py-spy", default=None, help="py-spy binary: profile daemon 0")
    p.add_argument("--py-spy-out", default="py-spy-daemon0.txt", help="folded stacks file")
    p.add_argument("--py-spy-daemon", type=int, default=0, help="the daemon py-spy records")
    p.add_argument(
        "--audits",
        choices=("on", "off"),
        default="on",
        help="the members audit each other's answers (as deployed); off: the gateway alone",
    )
    args = checked(p)
    if min(args.requests, args.concurrency, args.max_new_tokens, args.rounds) < 1:
        p.error("--requests, --concurrency, --max-new-tokens and --rounds must be >= 1")
    if (
        min(args.serial, args.spread_requests, args.warmup or 0, args.failure_backoff, args.ttft)
        < 0
    ):
        p.error("--serial, --spread-requests, --warmup and --failure-backoff must be >= 0")
    if not 0 <= args.daemon_nice <= 19:
        p.error("--daemon-nice must be between 0 and 19")
    if args.rounds > args.requests:
        p.error("--rounds must be <= --requests")

    headline = ["direct_p50_ms", "direct_p99_ms", "gateway_p50_ms", "gateway_p99_ms"]
    headline += ["overhead_p50_ms", "overhead_p99_ms", "failures", "direct_rps", "gateway_rps"]
    headline += ["credits_spent"]
    out: dict[str, Any] = {"requests": args.requests, "concurrency": args.concurrency}
    out["max_new_tokens"] = args.max_new_tokens
    out.update(dict.fromkeys(headline))  # the report's key order; null if never measured
    nice = {"SUPERNODE_CPU_NICE": str(args.daemon_nice)}
    fake = FakeUpstream.start() if args.upstream == "fake" else None
    try:
        settings = {**nice, "SUPERNODE_AUDITS_ENABLED": "true" if args.audits == "on" else "false"}
        if fake is not None:
            settings["SUPERNODE_PETALS_NODES"] = f"openai:{fake.url}"
        with federation(
            "bench-gateway-",
            out,
            args.keep,
            peers=args.peers,
            petals_nodes=0 if fake else 1,
            settings=settings,
        ) as fed:
            if args.node_cores and fake is None:
                pin_node(fed, args.node_cores)
            asyncio.run(Bench(fed, args, out, fake).go())
    finally:
        if fake is not None:
            fake.stop()
    out.update(
        gateway_daemon=0,
        upstream=args.upstream,
        rounds=args.rounds,
        peers=args.peers,
        credits_per_pack=args.credits,
        cpu_count=os.cpu_count(),
        node_cores=args.node_cores,
        daemon_nice=args.daemon_nice,
        audits=args.audits,
        wall_s=round(time.time() - T0, 2),
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run(main)
