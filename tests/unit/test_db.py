"""The ledger's connections: statements inline on the loop, waits off it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supernode.ledger.db import Database, run_migrations, sqlite_of


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated ledger with a scratch table ``probe (x)``."""
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    database = Database(path, busy_timeout_ms=5000)
    async with database.write() as conn:  # the connections open, the file is in WAL mode
        sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
    try:
        yield database
    finally:
        await database.close()


async def insert(db: Database, x: int, *, plain: bool) -> int:
    """One row, through SQLAlchemy's write() or the plain write_sql()."""
    if plain:
        async with db.write_sql() as raw:
            raw.execute("INSERT INTO probe VALUES (?)", (x,))
    else:
        async with db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (?)", (x,))
    return x


def rows(db: Database) -> list[int]:
    with sqlite3.connect(db.path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT x FROM probe"))


@pytest.mark.parametrize("plain", [False, True], ids=["write", "write_sql"])
async def test_a_write_waiting_for_another_process_lock_does_not_stall_the_loop(
    db: Database, plain: bool
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
    writing = asyncio.create_task(insert(db, 7, plain=plain))
    try:
        await asyncio.sleep(0.5)
        assert not writing.done()  # waiting for the lock (busy_timeout)...
        assert ticks >= 20  # ...while the loop keeps running
        other.execute("COMMIT")
        assert await asyncio.wait_for(writing, timeout=5) == 7
        async with db.read() as conn:
            assert sqlite_of(conn).execute("SELECT x FROM probe").fetchall() == [(7,)]
    finally:
        tick.cancel()
        other.close()


@pytest.mark.parametrize("plain", [False, True], ids=["write", "write_sql"])
async def test_reads_see_committed_writes_and_not_rolled_back_ones(
    db: Database, plain: bool
) -> None:
    await insert(db, 1, plain=plain)
    with pytest.raises(RuntimeError):
        async with db.write_sql() if plain else db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (2)")
            raise RuntimeError("abort")
    async with db.read() as conn:
        assert sqlite_of(conn).execute("SELECT x FROM probe").fetchall() == [(1,)]


async def test_both_kinds_of_write_interleave_on_the_one_writer(db: Database) -> None:
    done = await asyncio.gather(*(insert(db, i, plain=i % 2 == 0) for i in range(20)))
    assert sorted(done) == rows(db) == list(range(20))


async def test_quick_reads_see_commits_and_cannot_write(db: Database) -> None:
    async with db.quick_read() as quick:
        assert quick.execute("SELECT count(*) FROM probe").fetchone() == (0,)
    async with db.write() as conn:
        sqlite_of(conn).execute("INSERT INTO probe VALUES (3)")
        async with db.quick_read() as quick:  # not committed yet: not visible
            assert quick.execute("SELECT count(*) FROM probe").fetchone() == (0,)
    async with db.quick_read() as quick:  # the same connection again, a newer state
        assert sqlite_of(quick) is quick
        assert quick.execute("SELECT x FROM probe").fetchall() == [(3,)]
        with pytest.raises(sqlite3.OperationalError):
            quick.execute("INSERT INTO probe VALUES (4)")


async def test_a_write_cancelled_while_committing_leaves_the_writer_usable(db: Database) -> None:
    for plain in (True, False):
        for delay in (0, 0.0001, 0.0005, 0.001):
            task = asyncio.create_task(insert(db, 1, plain=plain))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert await asyncio.wait_for(insert(db, 2, plain=not plain), 5) == 2
    got = rows(db)
    assert got.count(2) == 8 and got.count(1) <= 8


def synchronous(conn: sqlite3.Connection) -> str:
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
        conn.execute("PRAGMA synchronous").fetchone()[0]
    ]


async def test_a_write_that_need_not_survive_a_power_cut_skips_only_its_own_fsync(
    db: Database,
) -> None:
    async with db.write_sql(durable=False) as raw:
        assert synchronous(raw) == "NORMAL"  # its COMMIT does not wait for the disk
        raw.execute("INSERT INTO probe VALUES (1)")
    assert rows(db) == [1]  # committed all the same
    async with db.write_sql() as raw:
        assert synchronous(raw) == "FULL"  # every other write stays durable
        raw.execute("INSERT INTO probe VALUES (2)")
    with pytest.raises(RuntimeError):  # also after one that failed half-way
        async with db.write_sql(durable=False) as raw:
            raw.execute("INSERT INTO probe VALUES (3)")
            raise RuntimeError("abort")
    async with db.write() as conn:
        assert synchronous(sqlite_of(conn)) == "FULL"
    assert rows(db) == [1, 2]
