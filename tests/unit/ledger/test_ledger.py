"""The ledger: statements inline on the loop, waits off it, durability by record."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supernode.ledger.db import Ledger, Record, run_migrations

KEPT = Record("kept", durable=True)
REBUILT = Record("rebuilt", durable=False)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Ledger]:
    """A migrated ledger with a scratch table ``probe (x)``."""
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    ledger = Ledger(path, busy_timeout_ms=5000)
    async with ledger.write(KEPT) as conn:  # the connection opens, the file is in WAL mode
        conn.execute("CREATE TABLE probe (x INTEGER)")
    try:
        yield ledger
    finally:
        await ledger.close()


async def insert(db: Ledger, x: int, *, durable: bool) -> int:
    async with db.write(KEPT if durable else REBUILT) as conn:
        conn.execute("INSERT INTO probe VALUES (?)", (x,))
    return x


def rows(db: Ledger) -> list[int]:
    with sqlite3.connect(db.path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT x FROM probe"))


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "rebuilt"])
async def test_a_write_waiting_for_another_process_lock_does_not_stall_the_loop(
    db: Ledger, durable: bool
) -> None:
    other = sqlite3.connect(db.path, isolation_level=None)  # e.g. an operator's sqlite3 shell
    other.execute("BEGIN IMMEDIATE")  # an inline BEGIN finds the lock taken: to the thread
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    writing = asyncio.create_task(insert(db, 7, durable=durable))
    try:
        await asyncio.sleep(0.5)
        assert not writing.done()  # waiting for the lock (busy_timeout)...
        assert ticks >= 20  # ...while the loop keeps running
        other.execute("COMMIT")
        assert await asyncio.wait_for(writing, timeout=5) == 7
        with db.read() as conn:
            assert conn.execute("SELECT x FROM probe").fetchall() == [(7,)]
    finally:
        tick.cancel()
        other.close()


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "rebuilt"])
async def test_reads_see_committed_writes_and_not_rolled_back_ones(
    db: Ledger, durable: bool
) -> None:
    await insert(db, 1, durable=durable)
    with pytest.raises(RuntimeError):
        async with db.write(KEPT if durable else REBUILT) as conn:
            conn.execute("INSERT INTO probe VALUES (2)")
            raise RuntimeError("abort")
    with db.read() as conn:
        assert conn.execute("SELECT x FROM probe").fetchall() == [(1,)]


async def test_durable_and_rebuildable_writes_interleave_on_the_one_writer(db: Ledger) -> None:
    done = await asyncio.gather(*(insert(db, i, durable=i % 2 == 0) for i in range(20)))
    assert sorted(done) == rows(db) == list(range(20))


async def test_reads_see_commits_and_cannot_write(db: Ledger) -> None:
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (0,)
        first = conn
    async with db.write(KEPT) as w:
        w.execute("INSERT INTO probe VALUES (3)")
        with db.read() as conn:  # not committed yet: not visible
            assert conn.execute("SELECT count(*) FROM probe").fetchone() == (0,)
    with db.read() as conn:  # the same connection again (kept), a newer state
        assert conn is first
        assert conn.execute("SELECT x FROM probe").fetchall() == [(3,)]
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("INSERT INTO probe VALUES (4)")


async def test_a_write_cancelled_while_committing_leaves_the_writer_usable(db: Ledger) -> None:
    for durable in (True, False):
        for delay in (0, 0.0001, 0.0005, 0.001):
            task = asyncio.create_task(insert(db, 1, durable=durable))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert await asyncio.wait_for(insert(db, 2, durable=not durable), 5) == 2
    got = rows(db)
    assert got.count(2) == 8 and got.count(1) <= 8


def synchronous(conn: sqlite3.Connection) -> str:
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
        conn.execute("PRAGMA synchronous").fetchone()[0]
    ]


async def test_a_write_of_only_rebuildable_records_skips_only_its_own_fsync(db: Ledger) -> None:
    async with db.write(REBUILT) as conn:
        assert synchronous(conn) == "NORMAL"  # its COMMIT does not wait for the disk
        conn.execute("INSERT INTO probe VALUES (1)")
    assert rows(db) == [1]  # committed all the same
    async with db.write(KEPT) as conn:
        assert synchronous(conn) == "FULL"  # every other write stays durable
        conn.execute("INSERT INTO probe VALUES (2)")
    with pytest.raises(RuntimeError):  # also after one that failed half-way
        async with db.write(REBUILT) as conn:
            conn.execute("INSERT INTO probe VALUES (3)")
            raise RuntimeError("abort")
    async with db.write(REBUILT, KEPT) as conn:  # a batch takes the strongest
        assert synchronous(conn) == "FULL"
    assert rows(db) == [1, 2]


async def test_a_write_must_say_what_it_stores(db: Ledger) -> None:
    with pytest.raises(ValueError, match="names what it stores"):
        async with db.write():
            pass
