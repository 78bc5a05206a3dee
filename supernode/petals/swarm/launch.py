"""``python -m supernode.petals.swarm.launch ARGS``: petals' own server, after the shim.

Runs in the Petals environment, started by ``supernode petals-server`` in a process group of
its own, with the arguments of ``petals.cli.run_server``. A Petals server is about a dozen
processes (the server, its DHT, two ``p2pd``, connection handlers); signalling only the main
one orphans the rest. So here:
- SIGTERM, SIGINT or SIGHUP ends the whole group at once (SIGKILL to every process in it): a
  server stopped is a server gone, as its clients see it either way;
- the group also ends when the process that started it dies, even by SIGKILL (the kernel's
  parent-death signal), so a killed ``supernode petals-server`` leaves nothing behind;
- petals' check for a newer release on PyPI is skipped (a server answers nobody outside).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import warnings
from types import FrameType

PARENT_PID_ENV = "SUPERNODE_PETALS_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _end_group(signum: int, _frame: FrameType | None = None) -> None:
    """Every process of this server's group, this one last (SIGKILL: at once, all of it)."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(128 + signum)


def _die_with_parent() -> None:
    """SIGTERM here when the starting process dies (then ``_end_group``)."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent stops the group itself
        return
    if os.getppid() != int(parent):  # it died before the signal was asked for
        _end_group(signal.SIGTERM)


def main() -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _end_group)
    _die_with_parent()
    # noise on every start, about nothing that happens: torch's renamed pytree helper, and
    # petals loading a block's weights into the module it builds for them
    warnings.filterwarnings("ignore", message=".*_register_pytree_node.*")
    warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")

    from supernode.petals.swarm import shim

    shim.apply()
    import petals.cli.run_server as run_server

    run_server.validate_version = lambda: None  # no call to PyPI
    sys.argv = ["petals.cli.run_server", *sys.argv[1:]]
    run_server.main()


if __name__ == "__main__":
    main()
