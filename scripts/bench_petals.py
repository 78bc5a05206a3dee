"""Petals benchmark: a model served through a private Petals swarm against the transformers
engine on the same weights.

Run:  .venv/bin/python scripts/bench_petals.py [--requests 24] [--tokens 32] [--keep]

In a temporary folder it makes the tiny random Llama (offline) and, one layout after
another, starts and measures:

* ``transformers``: one `supernode petals-node` running the model alone;
* ``swarm1``: one `supernode petals-server` holding every block, and a `petals-node
  --engine petals` over it;
* ``swarm2``: two servers splitting the blocks (the first half, the rest), and the node.

For each layout, ``--requests`` greedy generations of ``--tokens`` new tokens (prompts of 3
to 6 words, each different) over the node's WebSocket API (``/api/v2/generate``), first one
at a time (concurrency 1), then ``--concurrency`` (8) clients at once, after ``--warmup`` (2)
untimed ones. Every output is checked equal to the transformers engine's for its prompt.

Figures, per layout and concurrency (``c1``, ``c8``):
* ``tokens_per_s``: new tokens of all requests / the wall time of all of them;
* ``ttft_ms`` p50/p99: from sending the step to the first streamed message (the node holds
  one chunk back so the last can say ``stop``: that is the second token);
* ``latency_ms`` p50/p99: a whole request (session opened, step sent, last message read).
Per layout: ``start_s`` (servers: from the command to petals' "Started" with the multiaddr
printed, each; the node: to ``/health`` 200 with the swarm whole), ``pss_mib`` (the
proportional set size, from /proc/PID/smaps_rollup, of every process of the servers and of
the node, each process group counted whole, measured after the load), ``processes`` (how
many). It stops every process it started (also on error, Ctrl-C or SIGTERM) and prints one
JSON object as the LAST line of stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import log, pct, run

from supernode.local_nodes import PetalsNode, PetalsServer, make_tiny_model
from supernode.local_processes import PROCESS_LOG_ENV

WORDS = "the cat sat on a mat and one two three four what is time here now".split()


def prompts(n: int, offset: int) -> list[str]:
    """``n`` different prompts of 3 to 6 words."""
    out = []
    for i in range(n):
        k = 3 + (i + offset) % 4
        out.append(" ".join(WORDS[(i * 7 + j * 3 + offset) % len(WORDS)] for j in range(k)))
    return out


async def one(url: str, prompt: str, tokens: int) -> tuple[str, float, float]:
    """(text, ttft s, latency s) of one generation over /api/v2/generate."""
    from websockets.asyncio.client import connect

    began = time.perf_counter()
    async with connect(url.replace("http://", "ws://") + "/api/v2/generate") as ws:
        await ws.send(json.dumps({"type": "open_inference_session", "max_length": 128}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 60))["ok"] is True
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": tokens}))
        text, first = "", None
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if not msg.get("ok"):
                raise RuntimeError(f"refused: {msg}")
            if first is None:
                first = time.perf_counter() - sent
            text += msg["outputs"]
            if msg["stop"]:
                return text, first, time.perf_counter() - began


async def load(url: str, items: list[str], tokens: int, concurrency: int) -> dict[str, Any]:
    """Every prompt once, ``concurrency`` at a time; the figures and the texts."""
    queue = list(enumerate(items))
    texts: dict[int, str] = {}
    ttft: list[float] = []
    lat: list[float] = []

    async def client() -> None:
        while queue:
            i, prompt = queue.pop(0)
            text, first, whole = await one(url, prompt, tokens)
            texts[i] = text
            ttft.append(first * 1000)
            lat.append(whole * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    return {
        "wall_s": round(wall, 3),
        "tokens_per_s": round(len(items) * tokens / wall, 1),
        "ttft_ms": {"p50": pct(ttft, 50), "p99": pct(ttft, 99)},
        "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
        "texts": [texts[i] for i in range(len(items))],
    }


def pss_mib(log_paths: list[Path]) -> tuple[float, int]:
    """The PSS of every live process whose environment names one of these logs (a server's
    or the node's: their children inherit it), and how many there are."""
    needles = [f"{PROCESS_LOG_ENV}={p}".encode() for p in log_paths]
    total_kib, count = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if not any(n + b"\0" in environ + b"\0" for n in needles):
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    count += 1
        except OSError:
            continue
    return round(total_kib / 1024, 1), count


def measure(
    name: str,
    root: Path,
    model_dir: Path,
    blocks: list[str],
    args: argparse.Namespace,
    reference: dict[str, str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Start one layout, load it, stop it; its figures and its texts by prompt."""
    servers: list[PetalsServer] = []
    node: PetalsNode | None = None
    out: dict[str, Any] = {"servers": len(blocks), "blocks": blocks}
    try:
        peers: tuple[str, ...] = ()
        starts = []
        for i, b in enumerate(blocks):
            s = PetalsServer(i, model_dir, b, root / f"{name}-server-{i}.log", initial_peers=peers)
            servers.append(s)
            t = time.perf_counter()
            s.start()
            maddr = s.wait_started(timeout_s=300)
            starts.append(round(time.perf_counter() - t, 2))
            peers = peers or (maddr,)
            log(f"{name}: server {i} (blocks {b}) started in {starts[-1]} s")
        node = PetalsNode(
            0, model_dir, root / f"{name}-node.log", model_name="m", initial_peers=peers
        )
        t = time.perf_counter()
        node.start()
        node.wait_ready(timeout_s=300)
        out["start_s"] = {"servers": starts, "node": round(time.perf_counter() - t, 2)}
        log(f"{name}: node ready in {out['start_s']['node']} s")
        texts: dict[str, str] = {}
        asyncio.run(load(node.url, prompts(args.warmup, 99), args.tokens, 1))
        for c in (1, args.concurrency):
            items = prompts(args.requests, c)
            got = asyncio.run(load(node.url, items, args.tokens, c))
            for prompt, text in zip(items, got.pop("texts"), strict=True):
                texts[prompt] = text
                if reference is not None and reference.get(prompt) != text:
                    raise RuntimeError(f"{name}: {prompt!r} gave another text than transformers")
            out[f"c{c}"] = got
            log(f"{name} c{c}: {got['tokens_per_s']} tokens/s, ttft p50 {got['ttft_ms']['p50']} ms")
        logs = [s.log_path for s in servers] + [node.log_path]
        out["pss_mib"], out["processes"] = pss_mib(logs)
        if servers:
            out["pss_mib_servers"], _ = pss_mib([s.log_path for s in servers])
        return out, texts
    finally:
        if node is not None:
            node.stop()
        for s in servers:
            s.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--requests", type=int, default=24, help="timed requests per concurrency")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layouts", default="transformers,swarm1,swarm2")
    p.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    args = p.parse_args()
    if args.requests < 1 or args.tokens < 1 or args.concurrency < 1:
        p.error("--requests, --tokens and --concurrency must be at least 1")

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix="bench-petals-"))
    results: dict[str, Any] = {"requests": args.requests, "tokens": args.tokens}
    try:
        model_dir = root / "tiny-llama"
        make_tiny_model(model_dir)
        layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
        half = max(1, layers // 2)
        layouts = {
            "transformers": [],
            "swarm1": [f"0:{layers}"],
            "swarm2": [f"0:{half}", f"{half}:{layers}"],
        }
        reference: dict[str, str] | None = None
        for name in args.layouts.split(","):
            if name == "transformers":
                figures, texts = measure_transformers(root, model_dir, args)
                reference = texts
            else:
                figures, _ = measure(name, root, model_dir, layouts[name], args, reference)
            results[name] = figures
        results["outputs_equal"] = reference is not None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results))
    return 0


def measure_transformers(
    root: Path, model_dir: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, str]]:
    """The transformers engine alone: the same load, the reference texts."""
    node = PetalsNode(0, model_dir, root / "transformers-node.log", model_name="m")
    out: dict[str, Any] = {"servers": 0}
    try:
        t = time.perf_counter()
        node.start()
        node.wait_ready(timeout_s=300)
        out["start_s"] = {"node": round(time.perf_counter() - t, 2)}
        asyncio.run(load(node.url, prompts(args.warmup, 99), args.tokens, 1))
        texts: dict[str, str] = {}
        for c in (1, args.concurrency):
            items = prompts(args.requests, c)
            got = asyncio.run(load(node.url, items, args.tokens, c))
            texts.update(zip(items, got.pop("texts"), strict=True))
            out[f"c{c}"] = got
            log(f"transformers c{c}: {got['tokens_per_s']} tokens/s")
        out["pss_mib"], out["processes"] = pss_mib([node.log_path])
        return out, texts
    finally:
        node.stop()


if __name__ == "__main__":
    run(main)
