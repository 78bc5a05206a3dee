"""Engines, pragmas and transactions.

Two engines on one SQLite file in WAL mode: a single writer connection whose transactions
start with BEGIN IMMEDIATE (so a read-then-write never meets "database is locked"
half-way), and a small pool of readers, which WAL never blocks. Every connection gets its
pragmas when it opens. Migrations run (synchronously, with Alembic) before the engines
open.

Statements run on the event loop's own thread (``InlineConnection``): aiosqlite's
default sends every call (cursor, execute, fetch, close) to a worker thread and back,
which cost far more CPU than the point queries of this ledger take to run. Only BEGIN
(which may wait for another process's write lock), COMMIT and ROLLBACK (which wait for
fsync) still go to the connection's thread, so neither a slow disk nor a lock held
elsewhere stalls the loop.

The hottest statements (spend votes and certificates, the seen-envelope log) skip
SQLAlchemy's statement building and run as plain SQL on the sqlite3 connection under the
current transaction (``sqlite_of``): the same transaction, a fraction of the CPU. Their
reads outside a write can skip SQLAlchemy's pool too (``quick_read``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
T = TypeVar("T")
Conn = AsyncConnection | sqlite3.Connection  # what the plain-SQL repository functions take


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements run inline on the calling thread; only
    what may wait goes to the connection's worker thread: COMMIT and ROLLBACK (fsync),
    and BEGIN when it has to wait for another process's write lock.

    BEGIN IMMEDIATE is tried inline first without waiting (busy_timeout 0): in this
    daemon one writer connection serialises every write, so it normally gets the lock at
    once; only if another process holds it (an operator's sqlite3 shell, a second daemon
    on the same file) does it go to the thread to wait up to busy_timeout. It never runs
    inline while the thread still works on this connection (a COMMIT whose caller was
    cancelled), so the two never overlap."""

    busy_timeout_ms = 10_000
    _busy = 0  # calls queued to or running on the worker thread

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        if args and isinstance(args[0], str) and args[0][:5].upper() == "BEGIN":
            done, result = self._begin_inline(partial(fn, *args, **kwargs))
            if done:
                return result
            return await self._on_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def _begin_inline(self, begin: Callable[[], T]) -> tuple[bool, T | None]:
        """Run ``begin`` now if the write lock is free: (True, its result); (False, None)
        if it would have to wait (or the thread still works on this connection)."""
        if self._busy:
            return False, None
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=0")
        try:
            return True, begin()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            return False, None
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")

    async def begin_immediate(self) -> None:
        conn = self._conn
        done, _ = self._begin_inline(partial(conn.execute, "BEGIN IMMEDIATE"))
        if not done:
            await self._on_thread(conn.execute, "BEGIN IMMEDIATE")

    async def _on_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        self._busy += 1

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:  # counted down on the loop, even if the caller was cancelled
                loop.call_soon_threadsafe(self._one_done)

        return await aiosqlite.Connection._execute(self, run)

    def _one_done(self) -> None:
        self._busy -= 1

    async def commit(self) -> None:
        if self._conn.in_transaction:
            await self._on_thread(self._conn.commit)

    async def rollback(self) -> None:
        # A reader's connection is "rolled back" each time it returns to the pool; with
        # no transaction open there is nothing to wait for.
        if self._conn.in_transaction:
            await self._on_thread(self._conn.rollback)


def sqlite_of(conn: Conn) -> sqlite3.Connection:
    """The sqlite3 connection under ``conn`` (inside its transaction, if one is open);
    ``conn`` itself when it is one already (``Database.quick_read``)."""
    if isinstance(conn, sqlite3.Connection):
        return conn
    driver = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    assert isinstance(driver, InlineConnection)
    return driver._conn


def dict_rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def dict_row(cur: sqlite3.Cursor) -> dict[str, Any] | None:
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))


@cache
def insert_sql(table: str, columns: Sequence[str], skip_duplicates: bool = False) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...)`` (``columns`` a tuple), with ``ON
    CONFLICT DO NOTHING`` when ``skip_duplicates`` (a unique key already taken)."""
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    return sql + " ON CONFLICT DO NOTHING" if skip_duplicates else sql


async def _finish(op: Awaitable[None]) -> None:
    """Await a COMMIT or ROLLBACK to its end even if the caller is cancelled meanwhile
    (the write lock is held until the connection is free again), then re-raise the
    cancellation."""
    task = asyncio.ensure_future(op)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            cancelled = True
            if task.done():
                break
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def _inline_creator(database_file: Path, busy_timeout_ms: int) -> Callable[[], Any]:
    async def connect() -> InlineConnection:
        conn = InlineConnection(
            partial(sqlite3.connect, str(database_file), check_same_thread=False), 64
        )
        conn.busy_timeout_ms = busy_timeout_ms
        conn._thread.daemon = True
        return await conn

    return connect


def _set_pragmas(dbapi_conn, busy_timeout_ms: int) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def run_migrations(database_file: Path) -> None:
    """Upgrade the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    database_file.parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{database_file}")
    command.upgrade(cfg, "head")


class Database:
    """The ledger's engines. ``write()`` serialises writers; ``read()`` does not block."""

    QUICK_READERS_KEPT = 4  # idle quick_read() connections kept open

    def __init__(self, database_file: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = database_file
        self.busy_timeout_ms = busy_timeout_ms
        self._quick: list[sqlite3.Connection] = []
        self._write_lock = asyncio.Lock()  # one write transaction at a time
        self._writer_conn: AsyncConnection | None = None  # checked out once, kept
        url = f"sqlite+aiosqlite:///{database_file}"
        creator = _inline_creator(database_file, busy_timeout_ms)
        self.writer: AsyncEngine = create_async_engine(
            url, pool_size=1, max_overflow=0, async_creator=creator
        )
        self.reader: AsyncEngine = create_async_engine(
            url, pool_size=8, max_overflow=8, async_creator=creator
        )

        @event.listens_for(self.writer.sync_engine, "connect")
        def _writer_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            _set_pragmas(dbapi_conn, busy_timeout_ms)
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves

        @event.listens_for(self.writer.sync_engine, "begin")
        def _writer_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(self.reader.sync_engine, "connect")
        def _reader_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            _set_pragmas(dbapi_conn, busy_timeout_ms)

    async def _writer(self) -> AsyncConnection:
        if self._writer_conn is None or self._writer_conn.invalidated:
            if self._writer_conn is not None:
                await self._writer_conn.close()
            self._writer_conn = await self.writer.connect()
        return self._writer_conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        async with self._write_lock:
            conn = await self._writer()
            try:
                async with conn.begin():
                    yield conn
            except BaseException:
                # rolled back, or cut short (cancelled) half-way: hand the connection back
                # to the pool, which rolls back whatever is left; the next write takes it
                # again clean
                self._writer_conn = None
                await _finish(conn.close())
                raise

    @asynccontextmanager
    async def write_sql(self, durable: bool = True) -> AsyncIterator[sqlite3.Connection]:
        """A write transaction for the plain-SQL repository functions, on the same single
        writer connection as ``write()`` but without SQLAlchemy: BEGIN IMMEDIATE (inline
        when the lock is free), the statements inline, COMMIT on the connection's thread
        (fsync), rolled back on error. About a quarter of ``write()``'s CPU here.

        ``durable=False`` commits with synchronous=NORMAL: no fsync, so a power cut (not a
        crash of the process) may lose it, and with it only what peers or the next step
        can rebuild (a quote, a request's status, a result summary). Votes, certificates,
        packs, payments and refunds stay durable (design.md §6). The next durable commit
        syncs the log and everything before it."""
        async with self._write_lock:
            conn = await self._writer()
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert isinstance(driver, InlineConnection)
            if not durable:
                driver._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                await driver.begin_immediate()
                try:
                    yield driver._conn
                except BaseException:
                    await _finish(driver.rollback())
                    raise
                await _finish(driver.commit())
            finally:
                if not durable:  # every other write on this connection is durable
                    driver._conn.execute("PRAGMA synchronous=FULL")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def quick_read(self) -> AsyncIterator[sqlite3.Connection]:
        """A read-only sqlite3 connection for the plain-SQL repository functions (those
        built on ``sqlite_of``), without SQLAlchemy's pool: their statements run inline
        and WAL never blocks a reader, so a connection is held only for the few
        microseconds they take. Each statement reads the newest committed state."""
        conn = self._quick.pop() if self._quick else self._open_quick()
        try:
            yield conn
        finally:
            if len(self._quick) < self.QUICK_READERS_KEPT:
                self._quick.append(conn)
            else:
                conn.close()

    def _open_quick(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        _set_pragmas(conn, self.busy_timeout_ms)
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def close(self) -> None:
        if self._writer_conn is not None:
            await self._writer_conn.close()
            self._writer_conn = None
        while self._quick:
            self._quick.pop().close()
        await self.writer.dispose()
        await self.reader.dispose()
