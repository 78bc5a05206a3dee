"""Shared fixtures. Every process a test starts is ended by its fixture's finaliser."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from supernode.devnet import LocalFederation

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


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """anvil + 4 running daemons + a 5th member with no daemon and no collateral."""
    root: Path = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(
        root=root, peers=4, extra_members=1, unfunded=(4,), settings=dict(TEST_SETTINGS)
    )
    try:
        fed.start()
        yield fed
    finally:
        fed.stop()
