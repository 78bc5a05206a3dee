"""The ledger: one SQLite file, one way in.

``Ledger`` holds one writer connection and a few readers, all stdlib ``sqlite3`` in WAL
mode with their pragmas set when they open (WAL never blocks a reader). Every repository
function is plain SQL on the connection it is given, and a plain ``def``.

- ``read()``: a read-only connection, for as long as the ``with`` block. Statements run
  inline on the caller's thread (the event loop's): the point queries of this ledger take
  microseconds, far less than a hop to a thread and back.
- ``write(*records)``: a write transaction on the single writer connection, one at a time
  (BEGIN IMMEDIATE, so a read-then-write never meets "database is locked" half-way). Its
  statements run inline too. What may *wait* goes to the connection's own thread: BEGIN
  when another process holds the write lock (it is tried inline first, without waiting),
  and COMMIT/ROLLBACK, which wait for fsync. A commit finishes even if its caller is
  cancelled meanwhile; the next write starts only after it.

Durability is declared by what a transaction writes (``records``, see ``Record``), not
chosen at the call site: a transaction that writes anything that must be on disk before
the caller returns commits with ``synchronous=FULL``; one made only of what peers or the
next step can rebuild commits with ``synchronous=NORMAL`` (no fsync; a power cut, not a
crash, may lose it; the next durable commit syncs everything before it).

Migrations (Alembic, over the SQLAlchemy models in ``models.py``) run before it opens.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """A kind of record the ledger stores, and whether it must be on disk before the
    caller returns (``durable``) or can be rebuilt (by peers, or by the next step)."""

    name: str
    durable: bool


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


def in_chunks(values: Sequence[T], size: int = 900) -> Iterator[tuple[Sequence[T], str]]:
    """``values`` in chunks, each with its ``?, ?, ...`` placeholders (SQLite allows 32,766
    bound parameters; an ``IN (...)`` stays well under it)."""
    for i in range(0, len(values), size):
        chunk = values[i : i + size]
        yield chunk, ", ".join("?" * len(chunk))


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def run_migrations(database_file: Path) -> None:
    """Upgrade the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    database_file.parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{database_file}")
    command.upgrade(cfg, "head")


async def _finish(task: asyncio.Future[None]) -> None:
    """Await a COMMIT or ROLLBACK to its end even if the caller is cancelled meanwhile
    (the write lock is held until the connection is free again), then re-raise the
    cancellation."""
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


class Ledger:
    READERS_KEPT = 4  # idle read connections kept open

    def __init__(self, database_file: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = database_file
        self.busy_timeout_ms = busy_timeout_ms
        self._readers: list[sqlite3.Connection] = []
        self._writer: sqlite3.Connection | None = None
        self._synchronous = "FULL"  # the writer's setting now
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self._write_lock = asyncio.Lock()  # one write transaction at a time

    # -- read path --------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection; each statement sees the newest committed state."""
        conn = self._readers.pop() if self._readers else self._open_reader()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a caller that opened one: leave nothing behind
                conn.rollback()
            if len(self._readers) < self.READERS_KEPT:
                self._readers.append(conn)
            else:
                conn.close()

    def _open_reader(self) -> sqlite3.Connection:
        conn = _connect(self.path, self.busy_timeout_ms)
        conn.execute("PRAGMA query_only=ON")
        return conn

    # -- write path -------------------------------------------------------------------
    @asynccontextmanager
    async def write(self, *records: Record) -> AsyncIterator[sqlite3.Connection]:
        """A write transaction for ``records`` (what it stores: at least one); durable
        when any of them is. Rolled back if the block raises."""
        if not records:
            raise ValueError("a write names what it stores (ledger Records)")
        synchronous = "FULL" if any(r.durable for r in records) else "NORMAL"
        async with self._write_lock:
            conn = self._writer or self._open_writer()
            if synchronous != self._synchronous:  # not inside a transaction: it is allowed
                conn.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            await self._begin(conn)
            try:
                yield conn
            except BaseException:
                await _finish(self._on_thread(conn.rollback))
                raise
            await _finish(self._on_thread(conn.commit))

    def _open_writer(self) -> sqlite3.Connection:
        self._writer = _connect(self.path, self.busy_timeout_ms)
        self._synchronous = "FULL"
        return self._writer

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE inline if the write lock is free (in this daemon one writer
        serialises every write, so it normally is); if another process holds it (an
        operator's sqlite3 shell), on the thread, waiting up to busy_timeout."""
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        try:
            await _finish(self._on_thread(conn.execute, "BEGIN IMMEDIATE"))
        except asyncio.CancelledError:
            if conn.in_transaction:  # it began after all: leave the writer clean
                await _finish(self._on_thread(conn.rollback))
            raise

    def _on_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        async with self._write_lock:  # a commit in flight finishes first
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        while self._readers:
            self._readers.pop().close()
        self._thread.shutdown(wait=True)
