"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from supernode.ledger.db import run_migrations
from supernode.ledger.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = tmp_path / "schema.sqlite"
    run_migrations(db)
    run_migrations(db)  # idempotent
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
