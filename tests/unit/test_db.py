"""The ledger's connections: statements inline on the loop, waits off it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from supernode.ledger.db import Database, run_migrations, sqlite_of


async def test_a_write_waiting_for_another_process_lock_does_not_stall_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path, busy_timeout_ms=5000)
    async with db.write() as conn:  # the connections are open and the file is in WAL mode
        sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
    other = sqlite3.connect(path, isolation_level=None)  # e.g. an operator's sqlite3 shell
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def write() -> int:
        async with db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (7)")
        async with db.read() as conn:
            return sqlite_of(conn).execute("SELECT x FROM probe").fetchone()[0]

    tick = asyncio.create_task(ticker())
    writing = asyncio.create_task(write())
    try:
        await asyncio.sleep(0.5)
        assert not writing.done()  # waiting for the lock (busy_timeout)...
        assert ticks >= 20  # ...while the loop keeps running
        other.execute("COMMIT")
        assert await asyncio.wait_for(writing, timeout=5) == 7
    finally:
        tick.cancel()
        other.close()
        await db.close()


async def test_reads_see_committed_writes_and_not_rolled_back_ones(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path)
    try:
        async with db.write() as conn:
            sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
        async with db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (1)")
        try:
            async with db.write() as conn:
                sqlite_of(conn).execute("INSERT INTO probe VALUES (2)")
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        async with db.read() as conn:
            rows = sqlite_of(conn).execute("SELECT x FROM probe").fetchall()
        assert rows == [(1,)]
    finally:
        await db.close()


async def test_quick_reads_see_commits_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path)
    try:
        async with db.write() as conn:
            sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
        async with db.quick_read() as quick:
            assert quick.execute("SELECT count(*) FROM probe").fetchone() == (0,)
        async with db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (3)")
            async with db.quick_read() as quick:  # not committed yet: not visible
                assert quick.execute("SELECT count(*) FROM probe").fetchone() == (0,)
        async with db.quick_read() as quick:  # the same connection again, a newer state
            assert sqlite_of(quick) is quick
            assert quick.execute("SELECT x FROM probe").fetchall() == [(3,)]
            try:
                quick.execute("INSERT INTO probe VALUES (4)")
            except sqlite3.OperationalError as exc:
                assert "readonly" in str(exc) or "query_only" in str(exc) or "read" in str(exc)
            else:
                raise AssertionError("a quick reader wrote")
    finally:
        await db.close()
