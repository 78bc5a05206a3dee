"""The swarm's state, as the node's ``/health`` shows it: every block, the servers holding it.

``SwarmMonitor`` asks the DHT which servers announce each of the model's blocks, pings every
one of them, and keeps the answer: per server its peer id, blocks, state (``online``,
``joining``, ``offline``, or ``unreachable`` when it announces but does not answer a ping),
throughput and the rest of what it announces (the columns health.petals.dev shows); per block
the servers that can run it now. The swarm is healthy while every block has at least one
online, reachable server. A dead server's announcement stays in the DHT until it expires; the
ping is what tells it is gone, within one ``period``.

It runs on a thread of its own, every ``period`` seconds, each look bounded by ``timeout_s``;
a look that fails or times out makes the state unknown (unhealthy) until the next one works.
Runs in the Petals environment.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from loguru import logger

from supernode.petals.swarm.options import DEFAULT_PERIOD_S

DEFAULT_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SwarmState:
    ok: bool
    reason: str | None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    checked_at: float = 0.0  # wall-clock time of the look
    seconds: float = 0.0  # what the look took

    def detail(self) -> dict[str, Any]:
        return {
            "healthy": self.ok,
            "reason": self.reason,
            "blocks": self.blocks,
            "servers": self.servers,
            "checked_at": round(self.checked_at, 3),
            "check_seconds": round(self.seconds, 3),
        }


def summarise(
    block_uids: list[str], infos: list[Any], rtts: dict[Any, float], online_state: Any
) -> SwarmState:
    """The state from the DHT's module infos and the pings (a pure function; tested alone)."""
    servers: dict[str, dict[str, Any]] = {}
    blocks: list[dict[str, Any]] = []
    for index, (uid, info) in enumerate(zip(block_uids, infos, strict=True)):
        usable: list[str] = []
        for peer_id, server in info.servers.items():
            pid = peer_id.to_base58()
            rtt = rtts.get(peer_id, math.inf)
            reachable = rtt != math.inf
            state = server.state.name.lower() if reachable else "unreachable"
            row = servers.setdefault(
                pid,
                {
                    "peer_id": pid,
                    "state": state,
                    "blocks": [],
                    "throughput": round(float(server.throughput), 3),
                    "inference_rps": _num(server.inference_rps),
                    "forward_rps": _num(server.forward_rps),
                    "network_rps": _num(server.network_rps),
                    "ping_ms": round(rtt * 1000, 2) if reachable else None,
                    "public_name": server.public_name,
                    "version": server.version,
                    "torch_dtype": server.torch_dtype,
                    "using_relay": server.using_relay,
                    "cache_tokens_left": server.cache_tokens_left,
                },
            )
            row["blocks"].append(index)
            if reachable and server.state == online_state:
                usable.append(pid)
        blocks.append({"index": index, "uid": uid, "servers": sorted(usable)})
    for row in servers.values():
        row["blocks"] = _span(row["blocks"])
    missing = [b["index"] for b in blocks if not b["servers"]]
    reason = None
    if not blocks:
        reason = "the model has no blocks"
    elif missing:
        plural = "s" if len(missing) > 1 else ""
        reason = f"block{plural} {_span(missing)} served by no online server"
    return SwarmState(not reason, reason, blocks, sorted(servers.values(), key=_order))


def _order(row: dict[str, Any]) -> tuple[int, str]:
    return (int(str(row["blocks"]).split(":")[0].split(",")[0] or 0), row["peer_id"])


def _num(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _span(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> "0:3,5:6" (petals' START:END, END exclusive)."""
    out: list[str] = []
    for i in sorted(set(indexes)):
        if out and int(out[-1].split(":")[1]) == i:
            out[-1] = f"{out[-1].split(':')[0]}:{i + 1}"
        else:
            out.append(f"{i}:{i + 1}")
    return ",".join(out)


class SwarmMonitor:
    """Looks at the swarm every ``period_s`` on its own thread; ``state`` is the last look."""

    def __init__(
        self,
        dht: Any,
        block_uids: list[str],
        period_s: float = DEFAULT_PERIOD_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.dht, self.block_uids = dht, block_uids
        self.period_s, self.timeout_s = period_s, timeout_s
        self.state = SwarmState(False, "the swarm has not been looked at yet")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarm-monitor", daemon=True)

    def start(self) -> None:
        self.look()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.look()

    def look(self) -> SwarmState:
        """Ask the DHT and ping the servers now; keeps and returns the state."""
        from petals.data_structures import ServerState
        from petals.utils.dht import get_remote_module_infos
        from petals.utils.ping import ping_parallel

        began = time.monotonic()
        try:
            infos = get_remote_module_infos(
                self.dht, self.block_uids, latest=True, return_future=True
            ).result(timeout=self.timeout_s)
            peers = list({p for info in infos for p in info.servers})
            rtts = (
                self.dht.run_coroutine(
                    partial(ping_parallel, peers, wait_timeout=PING_TIMEOUT_S), return_future=True
                ).result(timeout=self.timeout_s)
                if peers
                else {}
            )
            state = summarise(self.block_uids, infos, rtts, ServerState.ONLINE)
        except Exception as exc:  # noqa: BLE001 - any failure to look is "unknown", never a crash
            state = SwarmState(False, f"the swarm could not be looked at: {type(exc).__name__}")
        took = time.monotonic() - began
        state = SwarmState(state.ok, state.reason, state.blocks, state.servers, time.time(), took)
        if state.ok != self.state.ok or state.reason != self.state.reason:
            (logger.info if state.ok else logger.warning)(
                "swarm {}", "healthy: every block is served" if state.ok else state.reason
            )
        self.state = state
        return state
