"""Engines, pragmas and transactions.

Two engines on one SQLite file in WAL mode: a single writer connection whose transactions
start with BEGIN IMMEDIATE (so a read-then-write never meets "database is locked"
half-way), and a small pool of readers, which WAL never blocks. Every connection gets its
pragmas when it opens. Migrations run (synchronously, with Alembic) before the engines
open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


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

    def __init__(self, database_file: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = database_file
        url = f"sqlite+aiosqlite:///{database_file}"
        self.writer: AsyncEngine = create_async_engine(url, pool_size=1, max_overflow=0)
        self.reader: AsyncEngine = create_async_engine(url, pool_size=4, max_overflow=4)

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

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        async with self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    async def close(self) -> None:
        await self.writer.dispose()
        await self.reader.dispose()
