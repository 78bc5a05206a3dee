"""Supernode: a federated peer daemon for operators who sell paid AI inference."""

import os
import sys
from importlib.util import find_spec

__version__ = "0.1.0"

# keccak-256 runs several times in every envelope and vote check. eth-hash picks its
# pycryptodome backend first; safe-pysha3's C keccak is about 3x faster per call here
# (1.7 vs 5.4 us), about 5% of a certified spend's CPU at every member. It must be chosen
# before eth-hash is first used, which is after this package is imported.
if find_spec("sha3") is not None:
    os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")

# py_ecc (which eth-account imports through eth-keyfile) raises the interpreter's recursion
# limit to 100,000 when it is imported. At that limit a deeply nested input overflows the C
# stack (a segfault) before Python can raise RecursionError. Import it first, here, and put
# the limit back: it sets the limit only once, at import.
_RECURSION_LIMIT = sys.getrecursionlimit()
if find_spec("py_ecc") is not None:
    import py_ecc  # noqa: F401, E402

    sys.setrecursionlimit(_RECURSION_LIMIT)
