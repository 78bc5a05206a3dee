"""Envelope types the ledger stores: each type names how to validate and store it.

Services register a handler per type; the intake looks the type up after the signature
check. Unknown types are refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from supernode.crypto.envelope import Envelope
from supernode.ledger.db import Record


@dataclass(frozen=True)
class Checked:
    """An envelope that passed every check, with its canonical bytes and what its
    handler's ``validate`` parsed on the way (so that ``store`` does not parse it again)."""

    env: Envelope
    raw: bytes
    via: str | None = None  # the peer that handed it over; None when made here
    parsed: Any = None


class EnvelopeHandler(Protocol):
    type: str
    # what store() writes: a batch is as durable as its strongest record (Ledger.write)
    record: Record

    # A handler may also have ``async def prepare(self, envs: Sequence[Envelope])``: the
    # intake awaits it once per batch, before the checks, for what they need read first.

    def validate(self, env: Envelope) -> Any:
        """Business rule on the payload; raises EnvelopeError. What it returns (None, or
        what it parsed) reaches ``store`` as ``Checked.parsed``."""

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        """Write the type's own rows for new envelopes (same transaction as the log)."""


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, EnvelopeHandler] = {}

    def register(self, handler: EnvelopeHandler) -> None:
        if handler.type in self._handlers:
            raise ValueError(f"handler for {handler.type} registered twice")
        self._handlers[handler.type] = handler

    def get(self, type_: str) -> EnvelopeHandler | None:
        return self._handlers.get(type_)

    @property
    def types(self) -> list[str]:
        return sorted(self._handlers)
