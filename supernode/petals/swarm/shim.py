"""Names hivemind 1.1.12 no longer re-exports, put back before ``import petals``.

petals 2.2.0.post1 (the newest release) was written against hivemind 1.1.10, which re-exported
the names of its submodules from ``hivemind``, ``hivemind.utils`` and ``hivemind.dht``. hivemind
1.1.12 (the release that supports pydantic 2 and ships the ``p2pd`` binary in its wheel) made
those imports explicit ("Make imports of hivemind submodules explicit", #663), so ``import
petals`` fails with ``ImportError: cannot import name 'PeerID' from 'hivemind'``. ``apply()``
puts exactly those names back, never overwriting a name that is there.

It runs in the Petals environment only (``.petals-venv``), in every process that imports
petals: the server launcher and the node's swarm engine. ``MISSING`` names what a hivemind
release lacks; ``apply`` refuses to go on when a name it must restore is nowhere to be found, so
a hivemind upgrade that moves one fails loudly here rather than deep inside petals.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# (module to take public names from, names to take or None for all public ones, targets)
_RESTORES: tuple[tuple[str, tuple[str, ...] | None, tuple[str, ...]], ...] = (
    (
        "hivemind.p2p",
        ("P2P", "P2PContext", "P2PHandlerError", "PeerID", "PeerInfo"),
        ("hivemind",),
    ),
    *(
        (f"hivemind.utils.{sub}", None, ("hivemind.utils", "hivemind"))
        for sub in (
            "asyncio",
            "limits",
            "logging",
            "mpfuture",
            "nested",
            "networking",
            "serializer",
            "streaming",
            "tensor_descr",
            "timed_storage",
            "performance_ema",
        )
    ),
    ("hivemind.compression", None, ("hivemind",)),
    ("hivemind.dht.node", ("DEFAULT_NUM_WORKERS",), ("hivemind.dht",)),
    ("hivemind.dht.validation", ("CompositeValidator", "RecordValidatorBase"), ("hivemind.dht",)),
)

# every name petals 2.2.0.post1 imports from these modules (read from its source; the test
# ``tests/petals/swarm/test_shim.py`` reads it again and fails if this list falls behind)
REQUIRED: dict[str, tuple[str, ...]] = {
    "hivemind": (
        "BatchTensorDescriptor",
        "DHT",
        "MAX_DHT_TIME_DISCREPANCY_SECONDS",
        "MSGPackSerializer",
        "P2P",
        "P2PContext",
        "PeerID",
        "TensorDescriptor",
        "TimedStorage",
        "anext",
        "compression",
        "deserialize_tensor_stream",
        "deserialize_torch_tensor",
        "dht",
        "get_dht_time",
        "get_logger",
        "nested_compare",
        "nested_flatten",
        "nested_pack",
        "serialize_torch_tensor",
    ),
    "hivemind.utils": (
        "DHTExpiration",
        "MPFuture",
        "TensorDescriptor",
        "enter_asynchronously",
        "get_dht_time",
        "get_logger",
        "limits",
        "logging",
    ),
    "hivemind.dht": ("DHT", "DHTNode", "DHTValue"),
    "hivemind.p2p": ("P2P", "P2PContext", "PeerID", "ServicerBase", "StubBase"),
}


class ShimError(ImportError):
    """A name the shim must restore is not in this hivemind."""


def _public(module: ModuleType) -> dict[str, object]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


def apply() -> list[str]:
    """Restore the names; returns those it added (``module.name``). Idempotent."""
    added: list[str] = []
    for source, names, targets in _RESTORES:
        module = importlib.import_module(source)
        if names is None:
            found = _public(module)
        else:
            lacking = [n for n in names if not hasattr(module, n)]
            if lacking:
                raise ShimError(f"{source} has no {', '.join(lacking)}: this hivemind moved them")
            found = {n: getattr(module, n) for n in names}
        for target in targets:
            into = importlib.import_module(target)
            for name, value in found.items():
                if not hasattr(into, name):
                    setattr(into, name, value)
                    added.append(f"{target}.{name}")
    missing = MISSING()
    if missing:
        raise ShimError(f"still missing after the shim: {', '.join(missing)}")
    return added


def MISSING() -> list[str]:  # noqa: N802 (reads as the constant it reports)
    """The names in ``REQUIRED`` that are not there now (``module.name``)."""
    return [
        f"{mod}.{name}"
        for mod, names in REQUIRED.items()
        for name in names
        if not hasattr(importlib.import_module(mod), name)
    ]
