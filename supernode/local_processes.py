"""The local processes a federation is made of: anvil, `supernode run` daemons,
`supernode petals-server` processes (a private Petals swarm) and `supernode petals-node`
processes (each server and node in its own process group, stopped whole). LocalFederation
(devnet.py) puts them together; tests and benchmarks use both."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ANVIL_IN_PROJECT = (
    PROJECT_ROOT / ".tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
)
# anvil's first well-known dev account (funded with 10,000 ETH on every anvil start)
ANVIL_DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
DEVNET_CHAIN_ID = 31337
ETH = 10**18
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# in the environment of a Petals server or node and so of every process it starts (p2pd
# included): its log's path, which names the federation's folder wherever it runs
PROCESS_LOG_ENV = "SUPERNODE_PROCESS_LOG"


class DevnetError(RuntimeError):
    pass


FIRST_PORT = 20000  # the lowest port ``free_port`` hands out
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (where it places outgoing connections and
    listeners on port 0)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A 127.0.0.1 port that is free now, for a process started later to listen on.

    Taken below the kernel's ephemeral range: a port the kernel picks for a listener on port
    0 or for any outgoing connection (a swarm's ``p2pd`` makes many) is in that range, so one
    of those could take a port picked there between this call and its owner's bind. Below it
    only another explicit bind can, and this process never hands out the same port twice."""
    top = _ephemeral_start()
    if top - FIRST_PORT >= 1000:
        for _ in range(200):
            port = secrets.choice(range(FIRST_PORT, top))
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # an unusual range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def anvil_binary() -> str:
    for cand in (
        os.environ.get("SUPERNODE_ANVIL_BIN"),
        str(ANVIL_IN_PROJECT),
        shutil.which("anvil"),
    ):
        if cand and Path(cand).is_file():
            return cand
    raise DevnetError("anvil not found: run ./set_up_project.sh (it installs @foundry-rs/anvil)")


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


class Anvil:
    """anvil on 127.0.0.1 at a free port (the binary itself, not the npm wrapper)."""

    def __init__(
        self, log_path: Path, chain_id: int = DEVNET_CHAIN_ID, block_time: int | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.chain_id = chain_id
        self.log_path = log_path
        self.block_time = block_time
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            anvil_binary(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
        ]
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise DevnetError(f"anvil exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if int(self.rpc("eth_chainId"), 16) == self.chain_id:
                    return
            except (httpx.HTTPError, DevnetError):
                time.sleep(0.05)
        raise DevnetError("anvil did not answer within 20 s")

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        resp = httpx.post(
            self.url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
            timeout=10,
        )
        data = resp.json()
        if "error" in data:
            raise DevnetError(f"{method}: {data['error']}")
        return data["result"]

    def send_eth(self, to: str, wei: int, sender: str = ANVIL_DEV_ACCOUNT) -> str:
        return self.rpc("eth_sendTransaction", [{"from": sender, "to": to, "value": hex(wei)}])

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None


@dataclass
class Daemon:
    """One `supernode run` process."""

    index: int
    address: str
    url: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def token(self) -> str:
        return self.env["SUPERNODE_OPERATOR_TOKEN"]

    def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supernode.cli", "run", "--env-file", "/dev/null"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(self.env["SUPERNODE_DATA_DIR"]),
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DevnetError(f"daemon {self.index} exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise DevnetError(
            f"daemon {self.index} not ready within {timeout_s:.0f} s; see {self.log_path}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # in case it was suspended
            _stop_process(self.proc)
            self.proc = None

    def suspend(self) -> None:
        """SIGSTOP: the daemon hangs (its socket accepts connections, nothing answers)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


TINY_MODEL_DIR = "tiny-llama"  # seed 0's folder; its name is the model every node serves


@dataclass(frozen=True)
class NodeSpec:
    """What a local Petals node serves: the tiny model made with ``seed`` (another seed, other
    weights, the same tokenizer and model name), and, with ``front`` set, the command of a
    process placed in front of it: it is started with ``--upstream URL --port N`` appended
    and must serve the node's API on that port (the tests put a cheating proxy there)."""

    seed: int = 0
    front: tuple[str, ...] = ()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to the process group ``proc`` leads (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):  # the group is gone (or its pid reused)
        pass


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the whole group, SIGKILL after ``timeout_s``; then nothing of it is left."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGCONT)  # a stopped process would not see SIGTERM
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    _signal_group(proc, signal.SIGKILL)  # any child the leader left behind


def make_tiny_model(model_dir: Path, seed: int = 0, timeout_s: float = READY_TIMEOUT_S) -> None:
    """The tiny random model in ``model_dir`` (made in a child process: no torch here)."""
    subprocess.run(
        [sys.executable, "-m", "supernode.petals.server.tiny_model", str(model_dir)]
        + ["--seed", str(seed)],
        check=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **OFFLINE},
    )


@dataclass
class PetalsServer:
    """One `supernode petals-server` process holding blocks ``blocks`` (START:END) of the
    model in ``model_dir``: the first of a swarm (no ``initial_peers``) or joining one. It
    leads its own process group; petals' server runs in another, which ends with it."""

    index: int
    model_dir: Path
    blocks: str
    log_path: Path
    initial_peers: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    maddr: str | None = None

    @property
    def maddr_file(self) -> Path:
        return self.log_path.with_suffix(".maddr")

    def command(self) -> list[str]:
        swarm = ("--initial-peers", *self.initial_peers) if self.initial_peers else ("--new-swarm",)
        return [
            *(sys.executable, "-m", "supernode.cli", "petals-server"),
            *("--model", str(self.model_dir), "--blocks", self.blocks, *swarm),
            *("--port", str(self.port), "--maddr-file", str(self.maddr_file)),
            *("--identity-file", str(self.log_path.with_suffix(".id")), "--max-restarts", "0"),
            *("--update-period", "5"),
        ]

    def start(self) -> None:
        self.maddr_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **OFFLINE, PROCESS_LOG_ENV: str(self.log_path)},
                start_new_session=True,
            )

    def wait_started(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Its multiaddr, once petals says it has started."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DevnetError(f"petals-server {self.index} exited:\n{tail}")
            if self.maddr_file.is_file() and (text := self.maddr_file.read_text().strip()):
                self.maddr = text
                return text
            time.sleep(0.1)
        raise DevnetError(f"petals-server {self.index} not started within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL, as a crash (petals' processes end with it)."""
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PetalsNode:
    """One `supernode petals-node` process serving a tiny random model (made with ``seed``,
    served as ``model_name``), or with ``front`` set that process behind the process it
    names, at ``url``. With ``initial_peers`` the node runs the model (already made in
    ``model_dir``) over that Petals swarm (``--engine petals``). Each process leads its own
    process group; stopping ends the group."""

    index: int
    model_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)  # the URL's port (the proxy's, if any)
    seed: int = 0
    model_name: str | None = None  # the name it serves (default: the folder's name)
    front: tuple[str, ...] = ()
    upstream_port: int = field(default_factory=free_port)  # the real node's, behind a proxy
    initial_peers: tuple[str, ...] = ()  # a swarm's servers: the petals engine
    proc: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What daemons call: the node, or the proxy in front of it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream_url(self) -> str:
        """The real node (the same as ``url`` without a proxy)."""
        return f"http://127.0.0.1:{self.upstream_port}" if self.front else self.url

    @property
    def model(self) -> str:
        return self.model_name or self.model_dir.name

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.proc, self.proxy) if p is not None]

    def node_command(self) -> list[str]:
        port = self.upstream_port if self.front else self.port
        if self.initial_peers:
            source = ("--model", str(self.model_dir), "--engine", "petals")
            source += ("--initial-peers", *self.initial_peers, "--swarm-health-period", "1")
        else:
            source = ("--tiny-random", str(self.model_dir), "--tiny-seed", str(self.seed))
        return [
            *(sys.executable, "-m", "supernode.cli", "petals-node", *source),
            *("--host", "127.0.0.1", "--port", str(port), "--model-name", self.model),
        ]

    def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.node_command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **OFFLINE, PROCESS_LOG_ENV: str(self.log_path)},
                start_new_session=True,
            )
        if self.front:
            self._start_front()

    @property
    def proxy_log_path(self) -> Path:
        return self.log_path.with_name(f"{self.log_path.stem}-proxy.log")

    def _start_front(self) -> None:
        with self.proxy_log_path.open("ab") as log:
            self.proxy = subprocess.Popen(
                [*self.front, "--upstream", self.upstream_url, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _check_alive(self) -> None:
        for what, p, log in (
            ("petals-node", self.proc, self.log_path),
            ("the proxy of petals-node", self.proxy, self.proxy_log_path),
        ):
            if p is not None and p.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise DevnetError(f"{what} {self.index} exited ({p.returncode}):\n{tail}")

    def model_made(self) -> bool:
        """The node's model folder is complete (a node of the same seed may load it now)."""
        from supernode.petals.server.tiny_model import is_tiny_model  # no torch import

        self._check_alive()
        return is_tiny_model(self.model_dir, self.seed)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self._check_alive()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise DevnetError(f"petals-node {self.index} not ready within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL to the node (and its proxy), as a crash."""
        for p in self.processes:
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=STOP_TIMEOUT_S)
        self.proc = self.proxy = None

    def suspend(self) -> None:
        """SIGSTOP: the node hangs (accepts connections, never answers)."""
        assert self.proc is not None
        for p in self.processes:
            _signal_group(p, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        for p in self.processes:
            _signal_group(p, signal.SIGCONT)

    def stop(self) -> None:
        for p in self.processes:
            _stop_group(p)
        self.proc = self.proxy = None


FAKE_UPSTREAM_SCRIPT = PROJECT_ROOT / "scripts" / "fake_upstream.py"


@dataclass
class FakeUpstream:
    """``scripts/fake_upstream.py`` (a fast OpenAI-compatible server with tool calling) in a
    process group of its own: what the gateway benchmark and the tools tests put behind the
    daemons as an ``openai:`` node."""

    url: str
    model: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, model: str = "fake-model", *extra: str, timeout_s: float = 20.0) -> FakeUpstream:
        """Started and answering ``GET /v1/models``; ``extra``: its options (``--no-tools``)."""
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(FAKE_UPSTREAM_SCRIPT), "--port", str(port), "--model", model]
            + list(extra),
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        node = cls(f"http://127.0.0.1:{port}", model, proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{node.url}/v1/models", timeout=2).status_code == 200:
                    return node
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        node.stop()
        raise DevnetError(f"the fake upstream for {model} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
        self.proc = None
