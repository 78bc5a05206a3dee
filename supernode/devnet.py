"""A local federation of real processes: anvil, a network file, funded collateral and
`supernode run` daemons on free 127.0.0.1 ports. `supernode devnet` runs one until
Ctrl-C; the integration tests and the benchmarks use the same class."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supernode.crypto.keys import Identity, load_keystore, write_secret_file
from supernode.federation.network import NetworkFile, init_network
from supernode.local_nodes import (  # noqa: F401 - re-exported: tests import them here
    TINY_MODEL_DIR,
    NodeSpec,
    PetalsNode,
    PetalsServer,
    make_tiny_model,
)
from supernode.local_processes import (  # noqa: F401 - re-exported: tests import them here
    ANVIL_DEV_ACCOUNT,
    DEVNET_CHAIN_ID,
    ETH,
    PROJECT_ROOT,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Anvil,
    Daemon,
    DevnetError,
    free_port,
)
from supernode.reputation.rules import ReputationRules

DEMO_BUYER_ETH = 100
FUNDING_TIMEOUT_S = 20.0  # the members' collateral transfers mined (a few blocks)
DEVNET_BLOCK_TIME_S = 1  # `supernode devnet`: a block a second
DEVNET_EPOCH_BLOCKS = 10  # `supernode devnet`: an epoch every 10 blocks


# CPU priority of the daemons of a federation that runs its Petals nodes on this host
DAEMON_NICE = 10


@dataclass
class LocalFederation:
    """anvil + a network file + ``peers`` daemons (+ ``extra_members`` listed but not run).

    ``unfunded`` lists member indexes given no collateral (they show as ineligible).
    ``block_time``: anvil mines a block every that many seconds (None: a block per
    transaction, and no other block unless a test mines one). Petals nodes: ``petals_nodes``
    honest ones, or one per ``node_specs`` entry; every daemon uses all of them, or with
    ``node_map`` daemon i uses ``nodes[j]`` for each j in ``node_map[i]`` (none if i is not
    a key). With ``swarm`` (one START:END block range per server), the nodes run the tiny
    model over a private Petals swarm of ``supernode petals-server`` processes holding those
    blocks (``--engine petals``) instead of each on its own."""

    root: Path
    peers: int = 4
    extra_members: int = 0
    unfunded: tuple[int, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    min_collateral_wei: int = 1 * ETH
    epoch_blocks: int = 10
    confirmations_required: int = 1
    # per daemon index: fields of the network file that daemon reads differently (a
    # misconfigured operator, e.g. another credit price)
    network_patch: dict[int, dict[str, Any]] = field(default_factory=dict)
    # local Petals nodes (tiny random model, seed 0, honest) every daemon sends its requests to
    petals_nodes: int = 0
    # or one node per spec (another seed, a truncating proxy); petals_nodes 0 or as many
    node_specs: list[NodeSpec] | None = None
    # daemon index -> indexes into nodes of the nodes that daemon uses (None: all of them)
    node_map: dict[int, list[int]] | None = None
    # seconds between blocks on anvil (None: a block per transaction only)
    block_time: int | None = None
    # the network file's reputation rules (None: the defaults)
    reputation: ReputationRules | None = None
    # a private Petals swarm: the blocks each server holds (empty: each node runs the model)
    swarm: tuple[str, ...] = ()
    servers: list[PetalsServer] = field(default_factory=list)
    nodes: list[PetalsNode] = field(default_factory=list)
    anvil: Anvil | None = None
    network: NetworkFile | None = None
    daemons: list[Daemon] = field(default_factory=list)
    passphrase: str = ""

    def specs(self) -> list[NodeSpec]:
        """The Petals nodes to start, one spec each."""
        if self.node_specs is None:
            return [NodeSpec() for _ in range(self.petals_nodes)]
        if self.petals_nodes not in (0, len(self.node_specs)):
            raise ValueError(
                f"petals_nodes={self.petals_nodes} but {len(self.node_specs)} node_specs"
            )
        return list(self.node_specs)

    def _check_layout(self) -> None:
        n = len(self.specs())
        for spec in self.specs():
            if spec.seed < 0:
                raise ValueError(f"bad node spec {spec}: the seed must be 0 or more")
        for daemon, picks in (self.node_map or {}).items():
            if not 0 <= daemon < self.peers:
                raise ValueError(f"node_map names daemon {daemon}; there are {self.peers}")
            if any(not 0 <= j < n for j in picks):
                raise ValueError(f"node_map[{daemon}] = {picks}: there are {n} petals nodes")
        if self.swarm and any(spec.seed for spec in self.specs()):
            raise ValueError("the nodes of a swarm serve its one model: seed 0")
        if self.block_time is not None and self.block_time < 1:
            raise ValueError("block_time must be at least 1 second")

    def node_urls(self, daemon: int) -> list[str]:
        """The URLs of the Petals nodes daemon ``daemon`` sends its requests to."""
        if self.node_map is None:
            return [n.url for n in self.nodes]
        return [self.nodes[j].url for j in self.node_map.get(daemon, [])]

    def start(self) -> None:
        self._check_layout()
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.anvil = Anvil(self.root / "anvil.log", block_time=self.block_time)
        self.anvil.start()
        self.passphrase = secrets.token_urlsafe(24)
        pass_file = self.root / "keys.pass"
        write_secret_file(pass_file, self.passphrase)
        ports = [free_port() for _ in range(self.peers + self.extra_members)]
        net, keystores = init_network(
            self.root,
            urls=[f"http://127.0.0.1:{p}" for p in ports],
            chain_id=DEVNET_CHAIN_ID,
            passphrase=self.passphrase,
            credit_price_wei=10**12,
            min_collateral_wei=self.min_collateral_wei,
            confirmations_required=self.confirmations_required,
            epoch_blocks=self.epoch_blocks,
            light_kdf=True,
            reputation=self.reputation,
        )
        self.network = net
        funded = [m.address for i, m in enumerate(net.members) if i not in self.unfunded]
        for address in funded:
            self.anvil.send_eth(address, 2 * self.min_collateral_wei)
        self._start_petals_nodes()
        self._wait_funded(funded)  # with a block time, the transfers wait for the next block
        for i in range(self.peers):
            node_dir = self.root / f"node-{i}"
            node_dir.mkdir(exist_ok=True)
            network_file = self.root / "network.json"
            if i in self.network_patch:
                network_file = node_dir / "network.json"
                net.model_copy(update=self.network_patch[i]).save(network_file)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SUPERNODE_")},
                "SUPERNODE_DATA_DIR": str(node_dir),
                "SUPERNODE_NETWORK_FILE": str(network_file),
                "SUPERNODE_KEYSTORE_FILE": str(keystores[i]),
                "SUPERNODE_KEYSTORE_PASSPHRASE_FILE": str(pass_file),
                "SUPERNODE_DATABASE_FILE": str(node_dir / "supernode.sqlite"),
                "SUPERNODE_HOST": "127.0.0.1",
                "SUPERNODE_PORT": str(ports[i]),
                "SUPERNODE_CHAIN_RPC_URL": self.anvil.url,
                "SUPERNODE_CHAIN_ID": str(DEVNET_CHAIN_ID),
                "SUPERNODE_OPERATOR_TOKEN": secrets.token_urlsafe(32),
                "SUPERNODE_MEMBERSHIP_INTERVAL_S": "1",
                "SUPERNODE_PETALS_NODES": ",".join(self.node_urls(i)),
                # the Petals nodes share this host: the daemons yield the CPU to the model
                "SUPERNODE_CPU_NICE": str(DAEMON_NICE if self.nodes else 0),
                **self.settings,
            }
            self.daemons.append(
                Daemon(
                    i,
                    net.members[i].address,
                    net.members[i].url,
                    ports[i],
                    env,
                    node_dir / "daemon.log",
                )
            )
        for d in self.daemons:
            d.start()
        for d in self.daemons:
            d.wait_ready()

    def _wait_funded(self, addresses: list[str], timeout_s: float = FUNDING_TIMEOUT_S) -> None:
        assert self.anvil is not None
        deadline = time.time() + timeout_s
        while any(self.anvil.balance(a) < 2 * self.min_collateral_wei for a in addresses):
            if time.time() > deadline:
                raise DevnetError(f"collateral not mined within {timeout_s:.0f} s")
            time.sleep(0.1)

    def _start_swarm(self) -> tuple[str, ...]:
        """The swarm's servers, the first starting it; returns its initial peers."""
        model_dir = self.root / TINY_MODEL_DIR
        make_tiny_model(model_dir)
        peers: tuple[str, ...] = ()
        for i, blocks in enumerate(self.swarm):
            server = PetalsServer(
                i, model_dir, blocks, self.root / f"petals-server-{i}.log", initial_peers=peers
            )
            self.servers.append(server)
            server.start()
            if not peers:  # the others join through the first
                peers = (server.wait_started(),)
        for server in self.servers:
            server.wait_started()
        return peers

    def _start_petals_nodes(self) -> None:
        peers = self._start_swarm() if self.swarm and self.specs() else ()
        self.nodes = [
            PetalsNode(
                i,
                self.root / (TINY_MODEL_DIR if s.seed == 0 else f"{TINY_MODEL_DIR}-seed{s.seed}"),
                self.root / f"petals-{i}.log",
                seed=s.seed,
                model_name=TINY_MODEL_DIR,  # one name for every seed: a daemon cannot tell
                front=s.front,
                initial_peers=peers,
            )
            for i, s in enumerate(self.specs())
        ]
        # The first node of each seed makes that model; the others load it once it is made.
        makers: dict[int, PetalsNode] = {}
        for n in self.nodes:
            makers.setdefault(n.seed, n)
        for n in makers.values():
            n.start()
        deadline = time.time() + READY_TIMEOUT_S
        while not all(n.model_made() for n in makers.values()):
            if time.time() > deadline:
                raise DevnetError(f"tiny models not made within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        for n in self.nodes:
            if makers[n.seed] is not n:
                n.start()
        for n in self.nodes:
            n.wait_ready()

    def identity(self, index: int) -> Identity:
        """A member's key (for tests that act as that member)."""
        return load_keystore(self.root / f"member-{index}.keystore.json", self.passphrase)

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        for n in self.nodes:
            n.stop()
        for server in self.servers:
            server.stop()
        if self.anvil is not None:
            self.anvil.stop()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEVNET_SWARM = ("0:1", "1:2")  # two servers, one of the tiny model's two blocks each


def run_devnet(peers: int, root: Path, engine: str = "petals") -> int:
    """`supernode devnet`: start a local federation, print how to use it, wait for Ctrl-C.
    ``engine`` petals: the Petals node runs the model over a private swarm of two servers
    that split its blocks; transformers: the node runs it alone (lighter)."""
    if root.exists():
        shutil.rmtree(root)
    # blocks on a timer, as on a real chain: an epoch passes every ~10 s
    fed = LocalFederation(
        root=root,
        peers=peers,
        petals_nodes=1,
        block_time=DEVNET_BLOCK_TIME_S,
        epoch_blocks=DEVNET_EPOCH_BLOCKS,
        swarm=DEVNET_SWARM if engine == "petals" else (),
    )
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        fed.start()
        d0 = fed.daemons[0]
        buyer = Identity.generate()  # a demo buyer, funded from anvil's first dev account
        fed.anvil.send_eth(buyer.address, DEMO_BUYER_ETH * ETH)
        key_file = fed.root / "buyer.key"
        write_secret_file(key_file, buyer.private_key.hex())
        lines = [
            f"Supernode devnet: {peers} supernodes, anvil at {fed.anvil.url} "
            f"(chain {DEVNET_CHAIN_ID}, a block every {DEVNET_BLOCK_TIME_S} s, "
            f"an epoch every {DEVNET_EPOCH_BLOCKS} blocks)",
            f"state and logs: {fed.root}",
            "",
        ]
        for d in fed.daemons:
            lines.append(f"  supernode {d.index}  {d.url}  {d.address}  operator token: {d.token}")
        urls = " ".join(d.url for d in fed.daemons)
        lines += [
            "",
            f"Demo buyer {buyer.address} ({DEMO_BUYER_ETH} ETH), key in {key_file}",
            "",
            "Try:",
            f"  curl -s {d0.url}/supernode_list_json",
            f"  curl -s -X POST {d0.url}/broadcast_message_to_all_sns \\",
            f"       -H 'Authorization: Bearer {d0.token}' -H 'content-type: application/json' \\",
            '       -d \'{"message_type": "hello", "message_body": "hi all", "wait_s": 5}\'',
            f"  curl -s '{fed.daemons[-1].url}/get_messages?last_k_minutes=10'",
            "",
            f"Petals node {fed.nodes[0].url} serves model {fed.nodes[0].model!r} (tiny, random)",
            *(
                f"  over Petals server {s.index} (blocks {s.blocks})  {s.maddr}"
                for s in fed.servers
            ),
            f"  swarm state: curl -s {fed.nodes[0].url}/health" if fed.servers else "",
            "",
            "  # 1. buy 1000 credits (quote, pay on anvil, certify); note the pack_id it prints",
            f"  SN={d0.url}; KEY={key_file}",
            "  .venv/bin/supernode client buy-credits --credits 1000 --supernode $SN \\",
            f"       --rpc-url {fed.anvil.url} --key $KEY",
            "  # 2. run a paid request (streams the output)",
            "  .venv/bin/supernode client infer --supernode $SN --key $KEY --pack PACK_ID \\",
            f"       --model {fed.nodes[0].model} 'the cat sat on the'",
            "  # 3. the balance, the same at every peer",
            f"  for u in {urls}; do curl -s $u/check_credit_pack_balance/PACK_ID; echo; done",
            "  # 4. an API key for the OpenAI SDK: a delegation of 200 credits for an hour",
            "  API_KEY=$(.venv/bin/supernode client delegate --supernode $SN --key $KEY \\",
            "       --pack PACK_ID --max-credits 200 --expires 3600)",
            f"  .venv/bin/python -c \"import openai, sys; c = openai.OpenAI(base_url='$SN/v1', "
            f"api_key='$API_KEY'); print(c.chat.completions.create(model='{fed.nodes[0].model}', "
            "max_tokens=16, messages=[{'role': 'user', 'content': 'hello'}]).choices[0]"
            '.message.content)"',
            "  # 5. reputation: the members audit each other's results; once an epoch has",
            "  #    closed (about 20 s here), every peer shows the same table and hash",
            f"  for u in {urls}; do curl -s $u/get_inference_sn_reputation_scores \\",
            "       | python3 -c 'import json,sys; t=json.load(sys.stdin); "
            'print(t["epoch"], t["hash"][:18], '
            '[(r["score"], r["audits_passed"]) for r in t["rows"]])\'; done',
            "  .venv/bin/supernode client reputation --supernode $SN",
            "",
            f"  open {d0.url}/ in a browser; API docs at {d0.url}/docs",
            "",
            "Ctrl-C stops every process the devnet started.",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        while not stop["now"]:
            time.sleep(0.5)
            for d in fed.daemons:
                if not d.running:
                    sys.stdout.write(f"supernode {d.index} exited; see {d.log_path}\n")
                    stop["now"] = True
        return 0
    except DevnetError as exc:
        sys.stderr.write(f"devnet: {exc}\n")
        return 1
    finally:
        sys.stdout.write("stopping the devnet...\n")
        fed.stop()
