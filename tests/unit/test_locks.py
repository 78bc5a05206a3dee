"""KeyedLock: one holder per key at a time, and no key kept once nobody uses it."""

from __future__ import annotations

import asyncio

from supernode.locks import KeyedLock


async def test_one_holder_per_key_and_nothing_kept_after() -> None:
    locks = KeyedLock()
    inside: dict[str, int] = {}
    most = 0

    async def use(key: str) -> None:
        nonlocal most
        async with locks.hold(key):
            inside[key] = inside.get(key, 0) + 1
            most = max(most, inside[key])
            assert key in locks
            await asyncio.sleep(0)
            inside[key] -= 1

    await asyncio.gather(*(use(f"k{i % 50}") for i in range(3000)))
    assert most == 1  # never two holders of one key
    assert len(locks) == 0 and "k1" not in locks  # 50 keys used, none kept


async def test_a_holder_that_raises_still_lets_go() -> None:
    locks = KeyedLock()
    try:
        async with locks.hold("x"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.hold("x"):  # and the key can be taken again at once
        pass
