"""Shared fixtures. Every process a test starts is ended by its fixture's finaliser."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from supernode.client import SupernodeClient
from supernode.crypto.keys import Identity
from supernode.devnet import ETH, LocalFederation
from supernode.petals.client.pool import NodeConfig, NodePool

T = TypeVar("T")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Fast timers for tests; the protocol is the same as with the defaults.
TEST_SETTINGS = {
    "SUPERNODE_ANTI_ENTROPY_INTERVAL_S": "0.5",
    "SUPERNODE_MEMBERSHIP_INTERVAL_S": "0.5",
    "SUPERNODE_PUSH_RETRIES": "1",
    "SUPERNODE_PUSH_BACKOFF_S": "0.1",
    "SUPERNODE_PENALTY_INVALID": "10",
    "SUPERNODE_BAN_THRESHOLD": "30",
    "SUPERNODE_LOG_LEVEL": "DEBUG",
}


def wait_until(
    fn: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``fn`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.time() + timeout_s
    last: T = fn()
    while not last:
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)
        last = fn()
    return last


def pack_state(fed: LocalFederation, i: int, pack_id: str) -> dict[str, Any] | None:
    """Daemon ``i``'s view of a credit pack (remaining credits, next sequence), or None."""
    r = httpx.get(f"{fed.daemons[i].url}/check_credit_pack_balance/{pack_id}", timeout=5)
    return r.json() if r.status_code == 200 else None


def post_signed(url: str, body: str) -> httpx.Response:
    """POST a signed envelope's JSON to a daemon's endpoint (``url``), as a client would."""
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)


def balances(fed: LocalFederation, pack_id: str) -> list[int | None]:
    """Every daemon's remaining credits of the pack (None where it is unknown)."""
    states = [pack_state(fed, i, pack_id) for i in range(len(fed.daemons))]
    return [s["remaining_credits"] if s else None for s in states]


def settled_balance(fed: LocalFederation, pack_id: str) -> int:
    """The balance once every daemon reports the same one twice, half a second apart, and
    no daemon holds credits of it answered and not yet settled (an OpenAI answer goes out
    before its request is settled)."""
    seen: list[list[int | None]] = []

    def steady() -> tuple[int] | None:
        states = [pack_state(fed, i, pack_id) for i in range(len(fed.daemons))]
        seen.append([s["remaining_credits"] if s else None for s in states])
        if any(s and s.get("unsettled_credits") for s in states):
            return None
        same = len(seen) > 1 and seen[-1] == seen[-2] and len(set(seen[-1])) == 1
        return (seen[-1][0],) if same and seen[-1][0] is not None else None

    return wait_until(steady, timeout_s=20, interval_s=0.5, what="the balances to settle")[0]


def buy_pack(fed: LocalFederation, credits: int) -> tuple[Identity, str]:
    """A new funded owner buys a pack at daemon 0; returns once every daemon holds it."""
    owner = Identity.generate()
    fed.anvil.send_eth(owner.address, 10 * ETH)  # type: ignore[union-attr]
    # mined at once, or with the next block when anvil mines on a timer
    wait_until(lambda: fed.anvil.balance(owner.address) > 0, what="the owner's funds")  # type: ignore[union-attr]
    with SupernodeClient(fed.daemons[0].url, identity=owner) as c:
        pack = c.buy_credits(credits, fed.anvil.url)  # type: ignore[union-attr]
    wait_until(
        lambda: all(pack_state(fed, i, pack["pack_id"]) for i in range(len(fed.daemons))),
        what="every daemon holds the pack",
    )
    return owner, pack["pack_id"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """anvil + 4 running daemons + a 5th member with no daemon and no collateral."""
    root: Path = tmp_path_factory.mktemp("federation")
    with LocalFederation(
        root=root, peers=4, extra_members=1, unfunded=(4,), settings=dict(TEST_SETTINGS)
    ) as fed:
        yield fed


def pid_alive(pid: int) -> bool:
    """A process with this id exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    """Some process is still in the process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id was reused by someone else's group
        return True
    return True


def processes_mentioning(text: str) -> list[int]:
    """Ids of this user's live processes whose command line or environment contains
    ``text`` (a federation's root folder: what is left of it after stop())."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in seen and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def cheating_front(truncate: int) -> tuple[str, ...]:
    """A NodeSpec ``front``: the proxy (tests/cheat_node.py) that cuts each answer's text to
    ``truncate`` characters and still reports the full token count."""
    return (sys.executable, "-m", "tests.cheat_node", "--truncate", str(truncate))


@asynccontextmanager
async def running_pool(*nodes: str | NodeConfig, **settings: Any) -> AsyncIterator[NodePool]:
    """A started pool (fast test timeouts). In a fresh pool the first node listed is tried first."""
    options: dict[str, Any] = {
        "request_timeout_s": 15.0,
        "connect_timeout_s": 1.0,
        "max_tries": 3,
        "breaker_failures": 3,
        "breaker_reset_s": 30.0,
        "stream_idle_timeout_s": 5.0,
        "health_timeout_s": 1.0,
    }
    options.update(settings)
    configs = [n if isinstance(n, NodeConfig) else NodeConfig(n) for n in nodes]
    pool = NodePool(configs, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()
