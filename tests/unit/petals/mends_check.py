"""Run in the Petals environment by ``test_swarm_parts.py``: petals' own ``InferenceSession``
and ``RemoteSequenceManager`` over in-process servers (A holds block 0; B and C both hold blocks
1 and 2), generating a prompt and five tokens, while the server routed for block 1 dies after
its Nth step. Prints a JSON line: how the session fares without and with ``mends.apply()``, and
whether the mended session's hidden states equal those of a run with no failure."""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402 - after the warnings filter

from supernode.petals.swarm import shim  # noqa: E402

shim.apply()
from hivemind import PeerID, deserialize_torch_tensor, serialize_torch_tensor  # noqa: E402
from hivemind.dht.node import Blacklist  # noqa: E402
from hivemind.proto import runtime_pb2  # noqa: E402
from hivemind.utils.tensor_descr import BatchTensorDescriptor  # noqa: E402
from petals.client import inference_session as petals_session  # noqa: E402
from petals.client.config import ClientConfig  # noqa: E402
from petals.client.routing.sequence_info import RemoteSequenceInfo  # noqa: E402
from petals.client.routing.sequence_manager import (  # noqa: E402
    RemoteSequenceManager,
    SequenceManagerState,
)
from petals.client.routing.spending_policy import NoSpendingPolicy  # noqa: E402
from petals.data_structures import RemoteModuleInfo, ServerInfo, ServerState  # noqa: E402

from supernode.petals.swarm import mends  # noqa: E402
from supernode.petals.swarm.options import DEFAULT_MAX_RETRIES  # noqa: E402

BLOCKS, HIDDEN = 3, 8
SERVERS = {"A": (0, 1), "B": (1, 3), "C": (1, 3)}
PEERS = {name: PeerID(name.encode() * 8) for name in SERVERS}


def run_blocks(h: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """What a server of blocks [start, end) computes over a session's whole input: each
    position depends on every one before it, as attention does."""
    steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
    for b in range(start, end):
        h = h + (b + 1) * 0.1 * torch.cumsum(h, dim=1) / steps
    return h


class Servers:
    """Which in-process servers are up; the one a session is routed through for block 1 dies
    after its ``dies_after``-th step there."""

    def __init__(self, dies_after: int = 0) -> None:
        self.dies_after, self.victim, self.victim_steps = dies_after, "", 0
        self.dead: set[str] = set()
        self.opened: list[str] = []  # server sessions opened, in order


def sequence_manager() -> RemoteSequenceManager:
    """petals' own sequence manager, its swarm state set as an update would leave it (so no
    DHT): the routes, bans and retries are petals' code."""
    # as the node's engine runs it: a failed step is tried again on another server, once
    config = ClientConfig(
        max_retries=DEFAULT_MAX_RETRIES, min_backoff=0, dht_prefix="m", show_route=False
    )
    infos = tuple(
        RemoteModuleInfo(
            f"m.{b}",
            {
                PEERS[n]: ServerInfo(ServerState.ONLINE, 1.0, start_block=s, end_block=e)
                for n, (s, e) in SERVERS.items()
                if s <= b < e
            },
        )
        for b in range(BLOCKS)
    )
    info = RemoteSequenceInfo.make_empty([i.uid for i in infos])
    info.update_(list(infos))
    manager = RemoteSequenceManager.__new__(RemoteSequenceManager)
    manager.config = config
    manager.state = SequenceManagerState(
        p2p=None,
        sequence_info=info,
        rpc_info={"inference_schema": ((BatchTensorDescriptor(HIDDEN),), {})},
        banned_peers=Blacklist(base_time=config.ban_timeout, backoff_rate=2.0),
    )
    manager.lock_changes = threading.Lock()
    manager._thread_start_lock = threading.Lock()
    manager._thread = UpdateThread()
    manager.ping_aggregator = NoPings()
    manager.allowed_servers = manager.blocked_servers = None
    manager.policy = NoSpendingPolicy()
    return manager


class UpdateThread:
    """The update thread, never started: the state above is the last update's."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.ready.set()
        self.trigger = threading.Event()

    def is_alive(self) -> bool:
        return True


class NoPings:
    def to_dict(self) -> dict[Any, float]:
        return {}


class FakeServerSession(petals_session._ServerInferenceSession):
    """One server's side of a session, in process: keeps the session's inputs as its cache."""

    servers: Servers

    async def _step(self, request: Any) -> Any:
        self.stepped = True
        name = next(n for n, p in PEERS.items() if p == self.span.peer_id)
        if name in self.servers.dead:
            raise TimeoutError  # what a step to a killed server ends with
        x = deserialize_torch_tensor(request.tensors[0])
        cache = getattr(self, "cache", None)
        self.cache = x if cache is None else torch.cat([cache, x], dim=1)
        out = run_blocks(self.cache, self.span.start, self.span.end)[:, -x.shape[1] :]
        if self.span.start == 1 and not self.servers.victim:
            self.servers.victim = name
        if name == self.servers.victim:
            self.servers.victim_steps += 1
            if self.servers.victim_steps == self.servers.dies_after:
                self.servers.dead.add(name)
        return runtime_pb2.ExpertResponse(tensors=[serialize_torch_tensor(out)])

    def close(self) -> None:
        self.closed = True


async def _create(cls: Any, config: Any, p2p: Any, span: Any, uid: Any, rpc_info: Any, **kw: Any):
    name = next(n for n, p in PEERS.items() if p == span.peer_id)
    FakeServerSession.servers.opened.append(name)
    if name in FakeServerSession.servers.dead:
        raise ConnectionRefusedError(f"{name} is down")  # what opening one on it ends with
    return FakeServerSession(config, span, uid, rpc_info, None, None, **kw)


petals_session._ServerInferenceSession.create = classmethod(_create)


def generate(servers: Servers) -> torch.Tensor:
    FakeServerSession.servers = servers
    torch.manual_seed(0)
    outs = []
    with (
        torch.no_grad(),
        petals_session.InferenceSession(sequence_manager(), max_length=16) as session,
    ):
        h = session.step(torch.randn(1, 4, HIDDEN))
        outs.append(h)
        for _ in range(5):
            h = session.step(h[:, -1:] * 0.5)
            outs.append(h)
    return torch.cat(outs, dim=1)


def survives(dies_after: int, want: torch.Tensor) -> dict[str, Any]:
    servers = Servers(dies_after)
    try:
        out = generate(servers)
    except Exception as exc:  # noqa: BLE001 - reported
        return {"ok": False, "error": repr(exc)[:300], "opened": servers.opened}
    same = bool(torch.allclose(out, want))
    return {"ok": True, "same": same, "opened": servers.opened, "victim": servers.victim}


def main() -> None:
    plain = Servers()
    want = generate(plain)
    report: dict[str, Any] = {"opened": plain.opened}
    # the server of block 1 dies after its 1st step (the prompt) or its 3rd (two tokens)
    report["unmended"] = [survives(n, want) for n in (1, 3)]
    report["routes_only"] = mends.mend_routes() and [survives(n, want) for n in (1, 3)]
    report["applied"] = mends.apply()
    report["again"] = mends.apply()
    report["mended"] = [survives(n, want) for n in (1, 3)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
