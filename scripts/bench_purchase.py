"""Credit-pack purchase benchmark: start a local federation of real processes, measure, stop it.

Run:  .venv/bin/python scripts/bench_purchase.py --peers 4 --purchases 200 [--keep]

It starts anvil (mining on demand: a block per transaction) + ``--peers`` `supernode run`
daemons (supernode.devnet.LocalFederation, 1 confirmation required) in a temporary folder,
stops everything it started (also on error, Ctrl-C or SIGTERM), and prints one JSON object
as the LAST line of stdout; progress goes to stderr. Each purchase has its own fresh buyer
(funded by ``anvil_setBalance``: no block), so concurrent payments never race on a nonce.

* ``quote_p50_ms`` / ``_p99_ms``: setup, ``--setup-concurrency`` purchases at once, daemon
  ``i % peers`` quotes purchase ``i``: one ``POST /credit_purchase_initial_request`` (the
  daemon prices the signed request and gathers a quorum of peers' agreements first).
* ``payment_p50_ms`` / ``_p99_ms``: the buyer pays with the SDK's ``send_payment`` (chain
  id, nonce, gas price and estimate, raw transaction, receipt): client and chain cost.
* ``confirm_to_certificate_p50_ms`` / ``_p99_ms`` (the headline): once all are paid, each
  purchase is confirmed by ``POST /confirm_credit_purchase_request`` (with its signed quote)
  at daemon ``(i + 1) % peers`` (not the one that quoted), ``--concurrency`` in flight:
  request sent -> 200 with status ``certified``. Meanwhile that daemon checks the payment on
  chain, binds it, gathers a quorum of peers' signatures (each checks the chain too) and
  gossips the certificate. ``purchases_per_s`` = purchases / (first confirm sent -> last
  answer), failures included. ``failures``: confirms without 200 certified (samples in
  ``failure_samples`` and on stderr), left out of the latencies.
  ``confirm_server_cpu_ms_per_purchase``: CPU (user + system, /proc) of anvil and every
  daemon in that phase per purchase; where they all share few cores it bounds the rate.
* ``all_peers_hold_packs``: then every daemon must answer ``GET
  /check_credit_pack_balance/{pack_id}`` 200 with remaining_credits == credits for every
  pack, polled up to ``--verify-timeout`` s (``packs_everywhere_s``: how long that took;
  a check of every pair takes ``first_check_s`` itself, ``missing_at_first_check`` says
  how many (daemon, pack) pairs that first check, started as the confirms ended, missed).
* ``end_to_end_p50_ms`` / ``_p99_ms``: ``--e2e`` more purchases one after another, each the
  SDK's whole ``SupernodeClient.buy_credits`` (info, quote, pay, confirm) at daemon ``i %
  peers``, as a user's command runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import T0, checked, federation, log, parser, pct, run

from supernode.client import SupernodeClient, send_payment
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.devnet import ETH, LocalFederation


def fund(fed: LocalFederation, n: int) -> list[Identity]:
    """``n`` fresh buyers with 10 ETH each (one kept-alive HTTP client: cheap, untimed)."""
    assert fed.anvil is not None
    buyers = [Identity.generate() for _ in range(n)]
    with httpx.Client(timeout=10) as c:
        for b in buyers:
            params = [b.address, hex(10 * ETH)]
            body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": params}
            if "error" in (data := c.post(fed.anvil.url, json=body).json()):
                raise RuntimeError(f"anvil_setBalance: {data['error']}")
    return buyers


def cpu_s(fed: LocalFederation) -> float | None:
    """CPU seconds (user + system) used so far by anvil and the daemons (Linux /proc)."""
    try:
        ticks = 0
        for proc in [d.proc for d in fed.daemons] + [fed.anvil.proc]:  # type: ignore[union-attr]
            stat = Path(f"/proc/{proc.pid}/stat").read_text()  # type: ignore[union-attr]
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, fed: LocalFederation, args: argparse.Namespace, out: dict[str, Any]):
        self.fed, self.args, self.out, self.d = fed, args, out, fed.daemons

    async def setup(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """Quote and pay every purchase; returns [{quote, tx_hash}] in purchase order."""
        args, net, anvil = self.args, self.fed.network, self.fed.anvil
        assert net is not None and anvil is not None
        buyers = fund(self.fed, args.purchases)
        log(f"setup: {args.purchases} buyers funded; quote + pay, {args.setup_concurrency} at once")
        quote_ms: list[float] = []
        pay_ms: list[float] = []  # (both in completion order)
        paid: list[dict[str, Any]] = [{}] * args.purchases
        sem = asyncio.Semaphore(args.setup_concurrency)

        async def one(i: int) -> None:
            at = self.d[i % len(self.d)]
            async with sem:
                req = sign_envelope(
                    buyers[i],
                    type_="credit_purchase_request",
                    network_id=net.network_id,
                    chain_id=net.chain_id,
                    payload={"credits": args.credits, "nonce": secrets.token_hex(16)},
                    ttl_s=600,
                )
                t = time.perf_counter()
                r = await client.post(
                    f"{at.url}/credit_purchase_initial_request",
                    content=req.model_dump_json(),
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                quote_ms.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"quote {i} at {at.index}: {r.status_code} {r.text[:300]}")
                quote = r.json()
                terms = quote["terms"]
                t = time.perf_counter()
                tx = await asyncio.to_thread(
                    send_payment,
                    anvil.url,
                    buyers[i],
                    to=terms["payment_address"],
                    value_wei=terms["amount_wei"],
                    data=terms["purchase_id"],
                    wait_s=30,
                )
                pay_ms.append((time.perf_counter() - t) * 1000)
                paid[i] = {"quote": quote, "tx_hash": tx}

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.purchases)))
        o = self.out
        o["setup_s"] = round(time.perf_counter() - start, 3)
        o.update(quote_p50_ms=pct(quote_ms, 50), quote_p99_ms=pct(quote_ms, 99))
        o.update(payment_p50_ms=pct(pay_ms, 50), payment_p99_ms=pct(pay_ms, 99))
        log(
            f"setup: {o['setup_s']} s; quote p50 {o['quote_p50_ms']} ms p99 "
            f"{o['quote_p99_ms']} ms; payment p50 {o['payment_p50_ms']} ms"
        )
        return paid

    async def confirm(self, client: httpx.AsyncClient, paid: list[dict[str, Any]]) -> list[str]:
        """Confirm every purchase concurrently; returns the certified pack ids."""
        d, o = self.d, self.out
        log(f"confirm: {len(paid)} purchases, {self.args.concurrency} in flight, rotating daemons")
        lat_ms: list[float] = []
        packs: list[str] = []
        failures: list[dict[str, Any]] = []
        sem = asyncio.Semaphore(self.args.concurrency)

        async def one(i: int, p: dict[str, Any]) -> None:
            at = (i + 1) % len(d)
            body = {"purchase_id": p["quote"]["terms"]["purchase_id"], **p}
            async with sem:
                t = time.perf_counter()
                try:
                    url = f"{d[at].url}/confirm_credit_purchase_request"
                    r = await client.post(url, json=body, timeout=60)
                except httpx.HTTPError as exc:
                    failures.append({"daemon": at, "status": None, "detail": repr(exc)[:300]})
                    return
                ms = (time.perf_counter() - t) * 1000
            try:
                data = r.json()  # FastAPI answers a JSON object, errors included
            except ValueError:
                data = {"detail": r.text}
            if r.status_code == 200 and data.get("status") == "certified":
                lat_ms.append(ms)
                packs.append(data["pack"]["pack_id"])
            else:
                detail = str(data.get("detail", data))[:300]
                failures.append({"daemon": at, "status": r.status_code, "detail": detail})

        cpu0, start = cpu_s(self.fed), time.perf_counter()
        await asyncio.gather(*(one(i, p) for i, p in enumerate(paid)))
        wall, cpu1 = time.perf_counter() - start, cpu_s(self.fed)
        o["confirm_to_certificate_p50_ms"] = pct(lat_ms, 50)
        o["confirm_to_certificate_p99_ms"] = pct(lat_ms, 99)
        o["purchases_per_s"] = round(len(paid) / wall, 2)
        o["failures"] = len(failures)
        o["confirm_to_certificate_max_ms"] = round(max(lat_ms), 2) if lat_ms else None
        o["confirm_to_certificate_mean_ms"] = round(statistics.fmean(lat_ms), 2) if lat_ms else None
        o["confirm_phase_s"] = round(wall, 3)
        if cpu0 is not None and cpu1 is not None:
            o["confirm_server_cpu_ms_per_purchase"] = round((cpu1 - cpu0) * 1000 / len(paid), 1)
        if failures:
            o["failure_samples"] = failures[:5]
            log(f"confirm: {len(failures)} FAILED, e.g. {json.dumps(failures[:3])}")
        log(
            f"confirm: {wall:.2f} s, {o['purchases_per_s']} purchases/s; p50 "
            f"{o['confirm_to_certificate_p50_ms']} ms p99 {o['confirm_to_certificate_p99_ms']} ms"
        )
        return packs

    async def verify(self, client: httpx.AsyncClient, packs: list[str]) -> None:
        """Every daemon must hold every certified pack with its full balance (bounded wait)."""
        pending = {(dm.url, pid) for dm in self.d for pid in packs}
        sem = asyncio.Semaphore(16)
        start = time.perf_counter()

        async def held(url: str, pid: str) -> bool:
            async with sem:
                try:
                    r = await client.get(f"{url}/check_credit_pack_balance/{pid}", timeout=10)
                except httpx.HTTPError:
                    return False
            b = r.json() if r.status_code == 200 else {}
            return b.get("remaining_credits") == b.get("credits") == self.args.credits

        while pending and time.perf_counter() - start < self.args.verify_timeout:
            keys = sorted(pending)
            ok = await asyncio.gather(*(held(*k) for k in keys))
            pending -= {k for k, good in zip(keys, ok, strict=True) if good}
            self.out.setdefault("missing_at_first_check", len(pending))
            self.out.setdefault("first_check_s", round(time.perf_counter() - start, 3))
            if pending:
                await asyncio.sleep(0.25)
        self.out["all_peers_hold_packs"] = not pending and len(packs) == self.args.purchases
        self.out["packs_everywhere_s"] = None if pending else round(time.perf_counter() - start, 3)
        if pending:
            self.out["packs_missing"] = len(pending)  # (daemon, pack) pairs
        log(f"verify: {len(packs)} packs x {len(self.d)} daemons; missing {len(pending)}")

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits) as client:
            await self.verify(client, await self.confirm(client, await self.setup(client)))

    def end_to_end(self) -> None:
        n, anvil = self.args.e2e, self.fed.anvil
        assert anvil is not None
        log(f"end-to-end: {n} sequential buy_credits")
        lat_ms: list[float] = []
        for i, b in enumerate(fund(self.fed, n)):
            with SupernodeClient(self.d[i % len(self.d)].url, identity=b) as c:
                t = time.perf_counter()
                pack = c.buy_credits(self.args.credits, anvil.url, wait_s=30)
                lat_ms.append((time.perf_counter() - t) * 1000)
            if pack["remaining_credits"] != self.args.credits:
                raise RuntimeError(f"end-to-end {i}: unexpected pack {pack}")
        self.out.update(end_to_end_p50_ms=pct(lat_ms, 50), end_to_end_p99_ms=pct(lat_ms, 99))
        log(f"end-to-end: p50 {self.out['end_to_end_p50_ms']} ms, p99 {pct(lat_ms, 99)} ms")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--purchases", type=int, default=200, help="purchases confirmed concurrently")
    p.add_argument("--concurrency", type=int, default=8, help="confirms in flight")
    p.add_argument("--setup-concurrency", type=int, default=4, help="quote + pay in flight")
    p.add_argument("--credits", type=int, default=100, help="credits per pack")
    p.add_argument("--e2e", type=int, default=20, help="sequential buy_credits (0: none)")
    args = checked(p)
    if min(args.purchases, args.concurrency, args.setup_concurrency, args.credits) < 1:
        p.error("--purchases, --credits and the concurrencies must be >= 1")
    if args.e2e < 0:
        p.error("--e2e must be >= 0")

    headline = ["confirm_to_certificate_p50_ms", "confirm_to_certificate_p99_ms"]
    headline += ["purchases_per_s", "failures", "all_peers_hold_packs"]
    out: dict[str, Any] = {"peers": args.peers, "purchases": args.purchases}
    out.update(dict.fromkeys(headline))  # the report's key order; null if never measured
    with federation("bench-purchase-", out, args.keep, peers=args.peers) as fed:
        bench = Bench(fed, args, out)
        asyncio.run(bench.run())
        if args.e2e:
            bench.end_to_end()  # synchronous, as a user's command: Ctrl-C stops it at once
    out.update(concurrency=args.concurrency, setup_concurrency=args.setup_concurrency)
    out.update(credits_per_pack=args.credits, confirmations_required=fed.confirmations_required)
    out.update(e2e_purchases=args.e2e, cpu_count=os.cpu_count())
    out["wall_s"] = round(time.time() - T0, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run(main)
