"""The local inference nodes a federation's daemons use: `supernode petals-server` processes
(a private Petals swarm), `supernode petals-node` processes, and ``FakeUpstream``
(`scripts/fake_upstream.py`, an OpenAI-compatible server with no model), each in its own
process group, stopped whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from supernode.local_processes import (
    OFFLINE,
    PROCESS_LOG_ENV,
    PROJECT_ROOT,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    DevnetError,
    free_port,
)

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
