"""keccak-256, called several times in every envelope, vote and certificate check.

safe-pysha3's C implementation, called directly, when installed (it is pinned): 1.6 us a
call against 4.6 us through eth-hash's wrapper here. eth-hash (with whatever backend it
finds) otherwise; both give the same digest (a unit test checks it).
"""

from __future__ import annotations

from eth_hash.auto import keccak as eth_hash_keccak

try:
    from sha3 import keccak_256 as _keccak_256
except ImportError:  # pragma: no cover - safe-pysha3 is in requirements.txt
    keccak = eth_hash_keccak
else:

    def keccak(data: bytes) -> bytes:  # type: ignore[misc]
        """keccak-256 of ``data`` (32 bytes)."""
        return _keccak_256(data).digest()
