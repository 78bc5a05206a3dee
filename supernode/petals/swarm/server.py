"""``supernode petals-server``: one Petals server, holding all or some of a model's blocks.

It starts petals' own server (``launch.py``, in the Petals environment) in a process group of
its own, passes its log through, prints its multiaddr once it has started (and writes it to
``--maddr-file``), restarts it if it dies (at most ``--max-restarts`` times, waiting longer
each time), and on SIGINT, SIGTERM or SIGHUP stops the whole group. If this process is killed
outright, the server's group ends too (see ``launch.py``).

A server joins a swarm (``--initial-peers``, the multiaddr another server printed) or starts a
new private one (``--new-swarm``). The flags are the knobs an operator needs; anything else of
``petals.cli.run_server`` goes after ``--`` unchanged.

Importing this module imports nothing of torch or petals: it runs in either environment.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from supernode.petals.swarm import env
from supernode.petals.swarm.launch import PARENT_PID_ENV

STARTED_TIMEOUT_S = 300.0  # from the first line to "Started": loading the blocks included
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (2.0, 30.0)  # first wait before a restart, and the longest
STABLE_S = 60.0  # a server up this long has its restart count cleared
DEFAULT_UPDATE_PERIOD_S = 15.0  # petals' default is 120: a dead server is noticed that late
_RUNNING = re.compile(r"Running a server on \[(.*?)\]")
_NOISE = (  # log lines petals writes on every start about nothing that happens
    "_register_pytree_node",
    "module._load_from_state_dict",
    "copying from a non-meta parameter",
)


@dataclass(frozen=True)
class ServerOptions:
    model: str
    new_swarm: bool
    initial_peers: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free one
    blocks: str | None = None  # "start:end"
    num_blocks: int | None = None
    dht_prefix: str | None = None
    throughput: str = "1.0"
    device: str = "cpu"
    dtype: str = "float32"
    identity_file: str | None = None
    public_name: str | None = None
    announce_maddrs: tuple[str, ...] = ()
    update_period_s: float = DEFAULT_UPDATE_PERIOD_S
    request_timeout_s: float = 60.0
    extra: tuple[str, ...] = ()

    def petals_args(self, port: int) -> list[str]:
        """The arguments of ``petals.cli.run_server`` for these options."""
        model = self.model
        args = [model, "--device", self.device, "--torch_dtype", self.dtype]
        args += ["--host_maddrs", f"/ip4/{self.host}/tcp/{port}"]
        args += ["--throughput", self.throughput, "--update_period", str(self.update_period_s)]
        args += ["--request_timeout", str(self.request_timeout_s)]
        prefix = self.dht_prefix or (Path(model).name if Path(model).is_dir() else None)
        if prefix:
            args += ["--dht_prefix", prefix]
        if self.blocks:
            args += ["--block_indices", self.blocks]
        elif self.num_blocks:
            args += ["--num_blocks", str(self.num_blocks)]
        if self.new_swarm:
            args.append("--new_swarm")
        else:
            args += ["--initial_peers", *self.initial_peers]
        if self.identity_file:
            args += ["--identity_path", self.identity_file]
        if self.public_name:
            args += ["--public_name", self.public_name]
        if self.announce_maddrs:
            args += ["--announce_maddrs", *self.announce_maddrs]
        # petals asks health.petals.dev whether a server of the public swarm is reachable;
        # these servers are always in a swarm of the operator's (explicit initial peers)
        args.append("--skip_reachability_check")
        return args + list(self.extra)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host != "0.0.0.0" else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_blocks(value: str) -> str:
    """``start:end`` with 0 <= start < end (petals' ``--block_indices``)."""
    m = re.fullmatch(r"(\d+):(\d+)", value)
    if not m or int(m[1]) >= int(m[2]):
        raise argparse.ArgumentTypeError(f"blocks must be START:END with START < END, not {value}")
    return value


class Supervisor:
    """Runs the server's group, passes its log on, restarts it, stops it whole."""

    def __init__(self, options: ServerOptions, maddr_file: Path | None, max_restarts: int):
        self.options, self.maddr_file, self.max_restarts = options, maddr_file, max_restarts
        self.port = options.port or _free_port(options.host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.stop_group()

    def stop_group(self) -> None:
        """SIGTERM to the server's group (its launcher then SIGKILLs every process in it);
        SIGKILL to the group if it is still there after ``STOP_TIMEOUT_S``."""
        proc = self.proc
        if proc is None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                continue
            try:  # the leader is gone; anything left of its group goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        restarts, wait = 0, RESTART_BACKOFF_S[0]
        while True:
            began = time.monotonic()
            code = self._run_once()
            if self.stopping:
                return 0
            if time.monotonic() - began > STABLE_S:
                restarts, wait = 0, RESTART_BACKOFF_S[0]
            if restarts >= self.max_restarts:
                _say(f"the server exited ({code}); not restarting after {restarts} restarts")
                return code or 1
            restarts += 1
            left = f"{restarts}/{self.max_restarts}"
            _say(f"the server exited ({code}); restart {left} in {wait:.0f} s")
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.2)
            if self.stopping:
                return 0
            wait = min(wait * 2, RESTART_BACKOFF_S[1])

    def _run_once(self) -> int:
        if self.stopping:  # a signal before the first start
            return 0
        argv = env.command("supernode.petals.swarm.launch", *self.options.petals_args(self.port))
        child_env = env.petals_env()
        child_env[PARENT_PID_ENV] = str(os.getpid())
        child_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        began, started, maddrs = time.monotonic(), False, ""
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            if any(n in line for n in _NOISE):
                continue
            sys.stdout.write(line)
            if not maddrs and (m := _RUNNING.search(line)):
                maddrs = m[1].replace("'", "").split(", ")[0]
            if not started and line.rstrip().endswith("[INFO] Started"):
                started = True
                _say(f"started in {time.monotonic() - began:.1f} s; multiaddr {maddrs}")
                if self.maddr_file is not None:
                    tmp = self.maddr_file.with_suffix(".tmp")
                    tmp.write_text(maddrs + "\n")
                    tmp.replace(self.maddr_file)
            sys.stdout.flush()
        code = self.proc.wait()
        self.stop_group()  # anything the leader left
        if self.maddr_file is not None:
            self.maddr_file.unlink(missing_ok=True)
        return code


def _say(text: str) -> None:
    sys.stdout.write(f"petals-server: {text}\n")
    sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``supernode petals-server``."""
    parser.add_argument("--model", required=True, help="a local model folder or a hub name")
    swarm = parser.add_mutually_exclusive_group(required=True)
    swarm.add_argument("--new-swarm", action="store_true", help="start a new private swarm")
    swarm.add_argument(
        "--initial-peers", nargs="+", metavar="MADDR", help="join the swarm of these servers"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--blocks", type=check_blocks, help="the blocks to hold, START:END")
    which.add_argument("--num-blocks", type=int, help="hold this many blocks (petals picks)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    parser.add_argument("--dht-prefix", help="the swarm's name for the model (default: folder)")
    parser.add_argument(
        "--throughput", default="1.0", help='requests/s to announce, or "auto" to measure it'
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--identity-file", help="the server's key (its peer id stays the same)")
    parser.add_argument("--public-name", help="a name shown in the swarm's health")
    parser.add_argument("--announce-maddrs", nargs="+", default=(), metavar="MADDR")
    parser.add_argument(
        "--update-period",
        type=float,
        default=DEFAULT_UPDATE_PERIOD_S,
        help="seconds between announcements of its blocks",
    )
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds, one call")
    parser.add_argument(
        "--max-restarts", type=int, default=3, help="restarts after the server dies (then exit)"
    )
    parser.add_argument("--maddr-file", help="write the multiaddr here once started")
    parser.add_argument("petals_args", nargs="*", help="after --: more petals run_server flags")


def run_from_args(args: argparse.Namespace) -> int:
    """Run as the parsed options say; returns a process exit status."""
    options = ServerOptions(
        model=args.model,
        new_swarm=bool(args.new_swarm),
        initial_peers=tuple(args.initial_peers or ()),
        host=args.host,
        port=args.port,
        blocks=args.blocks,
        num_blocks=args.num_blocks,
        dht_prefix=args.dht_prefix,
        throughput=args.throughput,
        device=args.device,
        dtype=args.dtype,
        identity_file=args.identity_file,
        public_name=args.public_name,
        announce_maddrs=tuple(args.announce_maddrs),
        update_period_s=args.update_period,
        request_timeout_s=args.request_timeout,
        extra=tuple(args.petals_args),
    )
    try:
        env.petals_python()
    except env.PetalsEnvMissing as exc:
        sys.stderr.write(f"petals-server: {exc}\n")
        return 1
    maddr_file = Path(args.maddr_file) if args.maddr_file else None
    return Supervisor(options, maddr_file, args.max_restarts).run()
