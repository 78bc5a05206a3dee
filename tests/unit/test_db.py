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


async def test_plain_sql_writes_share_the_writer_and_roll_back_on_error(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path, busy_timeout_ms=5000)
    try:
        async with db.write() as conn:
            sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
        async with db.write_sql() as raw:
            raw.execute("INSERT INTO probe VALUES (1)")
        try:
            async with db.write_sql() as raw:
                raw.execute("INSERT INTO probe VALUES (2)")
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        # both kinds interleave on the one writer connection
        results = await asyncio.gather(*(_insert(db, 10 + i, plain=i % 2 == 0) for i in range(20)))
        assert len(results) == 20
        async with db.quick_read() as quick:
            rows = {r[0] for r in quick.execute("SELECT x FROM probe").fetchall()}
        assert rows == {1} | {10 + i for i in range(20)}
    finally:
        await db.close()


async def _insert(db: Database, x: int, *, plain: bool) -> int:
    if plain:
        async with db.write_sql() as raw:
            raw.execute("INSERT INTO probe VALUES (?)", (x,))
    else:
        async with db.write() as conn:
            sqlite_of(conn).execute("INSERT INTO probe VALUES (?)", (x,))
    return x


async def test_plain_sql_write_waits_for_another_process_lock_off_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path, busy_timeout_ms=5000)
    async with db.write() as conn:
        sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the inline BEGIN finds the lock taken: thread
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    writing = asyncio.create_task(_insert(db, 5, plain=True))
    try:
        await asyncio.sleep(0.5)
        assert not writing.done() and ticks >= 20
        other.execute("COMMIT")
        assert await asyncio.wait_for(writing, timeout=5) == 5
    finally:
        tick.cancel()
        other.close()
        await db.close()


async def test_a_write_cancelled_while_committing_leaves_the_writer_usable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    run_migrations(path)
    db = Database(path)
    try:
        async with db.write() as conn:
            sqlite_of(conn).execute("CREATE TABLE probe (x INTEGER)")
        for plain in (True, False):
            for delay in (0, 0.0001, 0.0005, 0.001):
                task = asyncio.create_task(_insert(db, 1, plain=plain))
                await asyncio.sleep(delay)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                assert await asyncio.wait_for(_insert(db, 2, plain=not plain), 5) == 2
        async with db.quick_read() as quick:
            counts = dict(quick.execute("SELECT x, count(*) FROM probe GROUP BY x").fetchall())
        assert counts[2] == 8 and counts.get(1, 0) <= 8
    finally:
        await db.close()
