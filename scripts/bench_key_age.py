"""Key-age benchmark: does a request on an old API key cost more than one on a new key?

Run:  .venv/bin/python scripts/bench_key_age.py --requests 2000 [--peers 4] [--keep]

It starts anvil, one `supernode petals-node` (a tiny random Llama) and ``--peers`` daemons
(supernode.devnet.LocalFederation) in a temporary folder, buys one pack, makes ONE
delegation (OpenAI API key) for daemon 0, and sends ``--requests`` completions on that key,
one at a time (``--max-tokens`` each), through daemon 0. Everything it started is stopped
(also on error, Ctrl-C or SIGTERM); it prints one JSON object as the LAST line of stdout.

Per request a delegate spends from the key's reservation (a pack of its own) and every
voter checks that pack. If anything there were summed over the key's past certificates,
each request would cost more the older the key: this measures it. CPU (user + system,
from /proc) of all the daemons together is read before and after the first and the last ``--window``
requests:

* ``first_cpu_ms_per_request``, ``last_cpu_ms_per_request``: daemons' CPU per request in
  the first and the last window; ``ratio`` = last / first (1.0: the key's age costs
  nothing; the target is <= 1.2).
* ``first_p50_ms``, ``last_p50_ms``: the latency of those windows' requests.
* ``failures``: requests without a 200 and a text.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
from benchlib import checked, federation, log, parser, pct, run

from supernode.client import SupernodeClient
from supernode.crypto.keys import Identity
from supernode.devnet import ETH

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (after the command name)
    return total * 1000 / TICKS


def main() -> int:
    p = parser(__doc__, min_peers=1)
    p.add_argument("--requests", type=int, default=2000, help="requests on the one key")
    p.add_argument("--window", type=int, default=100, help="requests in each measured window")
    p.add_argument("--max-tokens", type=int, default=2, help="tokens per completion")
    args = checked(p)
    if args.requests < 2 * args.window:
        p.error("--requests must be at least twice --window")
    out: dict[str, Any] = {"peers": args.peers, "requests": args.requests, "window": args.window}
    with federation("bench-key-age-", out, args.keep, peers=args.peers, petals_nodes=1) as fed:
        assert fed.anvil is not None
        owner = Identity.generate()
        fed.anvil.send_eth(owner.address, 200 * ETH)  # the pack costs 100 ETH
        d0 = fed.daemons[0]
        with SupernodeClient(d0.url, identity=owner) as c:
            pack = c.buy_credits(10**8, fed.anvil.url)
            model = c.model_menu()[0]["model"]
            key = c.delegate(pack["pack_id"], 10**8, 3600)
        pids = [d.proc.pid for d in fed.daemons if d.proc is not None]
        body = {"model": model, "prompt": "the cat sat on the", "max_tokens": args.max_tokens}
        headers = {"Authorization": f"Bearer {key}"}
        lat: list[float] = []
        failures = 0
        marks: dict[int, float] = {}
        last_start = args.requests - args.window
        with httpx.Client(base_url=d0.url, headers=headers, timeout=60) as http:
            for i in range(args.requests):
                if i in (0, args.window, last_start):
                    marks[i] = cpu_ms(pids)
                t = time.perf_counter()
                r = http.post("/v1/completions", json=body)
                lat.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200 or not r.json()["choices"][0]["text"]:
                    failures += 1
                if (i + 1) % 500 == 0:
                    log(f"{i + 1} requests")
            marks[args.requests] = cpu_ms(pids)
        first = (marks[args.window] - marks[0]) / args.window
        last = (marks[args.requests] - marks[last_start]) / args.window
        out.update(
            first_cpu_ms_per_request=round(first, 2),
            last_cpu_ms_per_request=round(last, 2),
            ratio=round(last / first, 3),
            first_p50_ms=pct(lat[: args.window], 50),
            last_p50_ms=pct(lat[last_start:], 50),
            failures=failures,
        )
    print(json.dumps(out))  # noqa: T201 - the result line
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    run(main)
