"""The local processes a federation is made of: anvil and `supernode run` daemons, on ports
``free_port`` hands out (the inference nodes are in ``local_nodes.py``). LocalFederation
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
from dataclasses import dataclass
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
