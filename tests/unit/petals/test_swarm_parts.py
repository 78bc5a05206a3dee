"""The swarm's parts that need no swarm: the import shim (in the Petals environment, against
petals' own source), the mends of petals' client (its own session and routing over in-process
servers), the swarm state from the DHT's answer, and the commands' arguments."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from supernode.petals.server.run import add_arguments as node_arguments
from supernode.petals.server.run import to_argv
from supernode.petals.swarm import env
from supernode.petals.swarm.health import summarise
from supernode.petals.swarm.server import ServerOptions, check_blocks

# Run in the Petals environment: every name petals imports from hivemind's packages (read
# from petals' source, not from a list of ours) must be there once the shim has run, and
# every name the shim restores must be where it takes it from.
SHIM_CHECK = r"""
import ast, importlib, json, pathlib, warnings
warnings.filterwarnings("ignore")
import hivemind
from supernode.petals.swarm import shim
before = shim.MISSING()
sources = {}
for source, names, _ in shim._RESTORES:
    module = importlib.import_module(source)
    sources[source] = [n for n in (names or ()) if not hasattr(module, n)]
added = shim.apply()
import petals
root = pathlib.Path(petals.__file__).parent
imported = {}
for path in root.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in shim.REQUIRED:
            for alias in node.names:
                imported.setdefault(node.module, set()).add(alias.name)
missing = [
    f"{mod}.{name}"
    for mod, names in imported.items()
    for name in sorted(names)
    if not hasattr(importlib.import_module(mod), name)
]
unlisted = [
    f"{mod}.{name}"
    for mod, names in imported.items()
    for name in sorted(names)
    if name not in shim.REQUIRED[mod]
]
print(json.dumps({"before": before, "added": len(added), "sources": sources,
                  "missing": missing, "unlisted": unlisted, "again": len(shim.apply())}))
"""


def petals_report(*args: str) -> dict[str, Any]:
    """``python ARGS`` in the Petals environment (set-up makes it; a missing one fails
    here): the JSON line it prints last."""
    out = subprocess.run(
        [str(env.petals_python()), *args],
        env=env.petals_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_the_shim_restores_every_name_petals_imports() -> None:
    report = petals_report("-c", SHIM_CHECK)
    assert report["before"], "hivemind re-exports these again: the shim may be dropped"
    assert not any(report["sources"].values()), f"moved in hivemind: {report['sources']}"
    assert report["missing"] == [], f"petals imports names the shim does not restore: {report}"
    assert report["unlisted"] == [], f"shim.REQUIRED falls behind petals: {report['unlisted']}"
    assert report["added"] > 0 and report["again"] == 0  # idempotent


# --- petals' session over a server lost mid-generation (``mends``) -------------------------


def test_a_server_lost_mid_generation_is_replaced_and_the_output_is_unchanged() -> None:
    """petals' own ``InferenceSession`` and ``RemoteSequenceManager`` over in-process servers
    (``mends_check.py``): the swarm test kills a real server, but when, relative to a
    session's steps and the routing table's updates, depends on timing; here both are exact."""
    report = petals_report(str(Path(__file__).with_name("mends_check.py")))
    assert report["opened"] == ["A", "B"]  # no failure: block 0 on A, blocks 1-2 on B
    # petals as released: the retry is routed through the dead server again (mend 2) ...
    assert [r["opened"] for r in report["unmended"]] == [["A", "B", "B"]] * 2, report
    assert all("B is down" in r["error"] for r in report["unmended"]), report
    # ... and, routed to C, C's first step asserts (mend 1); drop a mend once petals fails so
    assert [r["opened"] for r in report["routes_only"]] == [["A", "B", "C"]] * 2, report
    assert all("Broken input cache" in r["error"] for r in report["routes_only"]), report
    assert report["applied"] == ["replacement position"] and report["again"] == []
    # mended: C replaces B, and every hidden state equals the run with no failure
    want = {"ok": True, "same": True, "opened": ["A", "B", "C"], "victim": "B"}
    assert report["mended"] == [want, want], report


# --- the swarm state ----------------------------------------------------------------------


class State(Enum):
    OFFLINE = 0
    JOINING = 1
    ONLINE = 2


@dataclass(frozen=True)
class Peer:
    name: str

    def to_base58(self) -> str:
        return self.name


@dataclass
class Server:
    state: State = State.ONLINE
    throughput: float = 1.0
    inference_rps: float | None = None
    forward_rps: float | None = None
    network_rps: float | None = None
    public_name: str | None = None
    version: str | None = "2.2.0.post1"
    torch_dtype: str | None = "float32"
    using_relay: bool | None = False
    cache_tokens_left: int | None = 8192


@dataclass
class Info:
    servers: dict[Peer, Server] = field(default_factory=dict)


A, B, C = Peer("A"), Peer("B"), Peer("C")
UIDS = ["m.0", "m.1", "m.2"]


def state(infos: list[Info], rtts: dict[Peer, float]) -> Any:
    return summarise(UIDS, infos, rtts, State.ONLINE)


def test_a_whole_swarm_is_healthy_and_lists_each_servers_span() -> None:
    s = Server()
    got = state(
        [Info({A: s}), Info({A: s, B: s}), Info({B: s})],
        {A: 0.001, B: 0.002},
    )
    assert got.ok and got.reason is None
    assert [b["servers"] for b in got.blocks] == [["A"], ["A", "B"], ["B"]]
    assert {r["peer_id"]: r["blocks"] for r in got.servers} == {"A": "0:2", "B": "1:3"}
    assert [r["ping_ms"] for r in got.servers] == [1.0, 2.0]


def test_an_unreachable_or_joining_server_serves_no_block() -> None:
    got = state(
        [Info({A: Server()}), Info({B: Server(state=State.JOINING)}), Info({C: Server()})],
        {A: 0.001, B: 0.001, C: math.inf},  # C announces but does not answer a ping
    )
    assert not got.ok and got.reason == "blocks 1:3 served by no online server"
    rows = {r["peer_id"]: r for r in got.servers}
    assert rows["B"]["state"] == "joining" and rows["C"]["state"] == "unreachable"
    assert rows["C"]["ping_ms"] is None


def test_a_block_nobody_announces_is_missing() -> None:
    got = state([Info({A: Server()}), Info(), Info({A: Server()})], {A: 0.001})
    assert not got.ok and got.reason == "block 1:2 served by no online server"
    empty = summarise([], [], {}, State.ONLINE)  # a model with no blocks is not served
    assert not empty.ok and empty.reason == "the model has no blocks"


# --- the commands' arguments -------------------------------------------------------------


def test_server_options_become_petals_run_server_arguments(tmp_path: Path) -> None:
    model = tmp_path / "tiny-llama"
    model.mkdir()
    first = ServerOptions(str(model), new_swarm=True, initial_peers=(), blocks="0:1")
    args = first.petals_args(4000)
    assert args[0] == str(model) and "--new_swarm" in args and "--initial_peers" not in args
    assert args[args.index("--dht_prefix") + 1] == "tiny-llama"  # what the node uses too
    assert args[args.index("--block_indices") + 1] == "0:1"
    assert args[args.index("--host_maddrs") + 1] == "/ip4/127.0.0.1/tcp/4000"
    assert "--skip_reachability_check" in args
    joining = ServerOptions(
        "org/model",
        new_swarm=False,
        initial_peers=("/ip4/1.2.3.4/tcp/1/p2p/Qm",),
        host="0.0.0.0",
        num_blocks=4,
        extra=("--num_handlers", "4"),
    )
    args = joining.petals_args(4001)
    assert args[args.index("--initial_peers") + 1] == "/ip4/1.2.3.4/tcp/1/p2p/Qm"
    assert "--dht_prefix" not in args
    assert args[args.index("--num_blocks") + 1] == "4" and args[-2:] == ["--num_handlers", "4"]


@pytest.mark.parametrize("bad", ["1:1", "2:1", "a:b", "0", "-1:2", ""])
def test_blocks_must_be_a_range(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        check_blocks(bad)
    assert check_blocks("0:2") == "0:2"


def test_a_petals_node_command_parses_back_the_same_in_the_petals_environment() -> None:
    parser = argparse.ArgumentParser()
    node_arguments(parser)
    argv = [
        "--model",
        "/m",
        "--engine",
        "petals",
        "--initial-peers",
        "/ip4/a",
        "/ip4/b",
        "--port",
        "5001",
        "--max-retries",
        "4",
        "--request-timeout",
        "7.5",
    ]
    args = parser.parse_args(argv)
    again = parser.parse_args(to_argv(args))
    assert vars(again) == vars(args)
    assert again.initial_peers == ["/ip4/a", "/ip4/b"] and again.max_retries == 4
