"""What every benchmark script shares: a local federation that is always stopped and
cleaned up (errors, Ctrl-C, SIGTERM), progress on stderr, nearest-rank percentiles."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from supernode.devnet import LocalFederation

T0 = time.time()


def parser(doc: str | None, *, min_peers: int = 2, verify_timeout: bool = True) -> Any:
    """An argument parser with what every benchmark takes: --peers, --keep (and
    --verify-timeout); ``checked(p)`` parses and refuses too few peers."""
    import argparse

    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--peers", type=int, default=4, help=f"daemons to run (>= {min_peers})")
    if verify_timeout:
        p.add_argument("--verify-timeout", type=float, default=30.0, help="bound of each wait (s)")
    p.add_argument("--keep", action="store_true", help="keep the federation folder (logs)")
    p.set_defaults(min_peers=min_peers)
    return p


def checked(p: Any) -> Any:
    """Parse the command line of a ``parser()``; --peers below its minimum is an error."""
    args = p.parse_args()
    if args.peers < args.min_peers:
        p.error(f"--peers must be >= {args.min_peers}")
    return args


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.time() - T0:7.2f}s] {msg}\n")
    sys.stderr.flush()


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))], 2)


@contextmanager
def federation(
    prefix: str, out: dict[str, Any], keep: bool, **fed_kw: Any
) -> Iterator[LocalFederation]:
    """Start a LocalFederation in a new temporary folder; always stop it and remove the
    folder (unless ``keep``). SIGTERM unwinds like Ctrl-C; a second signal cannot cut the
    clean-up short (each stop is bounded). Records ``federation_start_s`` in ``out``."""

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    fed = LocalFederation(root=root, **fed_kw)
    try:
        log(f"starting the federation in {root}")
        t = time.perf_counter()
        fed.start()
        out["federation_start_s"] = round(time.perf_counter() - t, 2)
        log(f"federation ready in {out['federation_start_s']} s")
        yield fed
    except BaseException:
        log(f"failed; partial results: {json.dumps(out)}")
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopping the federation")
        fed.stop()
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(main: Callable[[], int]) -> None:
    """Exit with main's status; 130 after Ctrl-C or SIGTERM (already cleaned up)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
