"""Recording finished runs, and the request rows of requests in flight.

A run's result, its charge (a request answered from a reservation) or refund (a certified
one), and its summary: the refund is published before the request shows as finished (a
reader never sees "completed" with its refund still to come), the row is written through
one group commit shared by every request-row write queued meanwhile (``write_rows``: a
request answered, a run's result, a failure; each caller returns once its own is on disk),
and the summary goes to the batcher (summaries.SummaryBatcher) once the row is written.
Records of requests already answered run in the background (``record_later``); the
daemon's stop waits for them, bounded."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from supernode.crypto.hashing import keccak
from supernode.federation.signer import Signer
from supernode.inference import results
from supernode.inference.menu import Menu, ModelEntry
from supernode.inference.summaries import SummaryBatcher
from supernode.ledger import inference as repo
from supernode.ledger.db import Ledger, Record
from supernode.ledger.group_commit import GroupCommit

RECORD_WAIT_S = 10.0  # at stop, how long finished runs may take to be recorded
ROWS_BATCH_MAX = 256  # request-row writes in one transaction

# a write of request rows: what it stores, and the statements (run in the transaction)
RowWrite = tuple[tuple[Record, ...], Callable[[sqlite3.Connection], None]]


def _write_rows(conn: sqlite3.Connection, writes: list[RowWrite]) -> list[None]:
    for _, statements in writes:
        statements(conn)
    return [None] * len(writes)


def _rows_records(writes: list[RowWrite]) -> set[Record]:
    return {r for records, _ in writes for r in records}


def openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def result_hash(text: str) -> str:
    return "0x" + keccak(text.encode("utf-8")).hex()


class Recorder:
    def __init__(
        self,
        *,
        db: Ledger,
        signer: Signer,
        publish: Callable[..., Awaitable[Any]],
        menu: Menu,
        count_tokens: Callable[[str, str], Awaitable[int]],
    ) -> None:
        self.db = db
        self.signer = signer
        self.publish = publish
        self.menu = menu
        self.count_tokens = count_tokens  # (model, text) -> the model's token count
        self._recording: set[asyncio.Task[Any]] = set()  # results answered, being recorded
        # told (pack, quote, charge) when a request answered from a reservation has its
        # charge (set by the OpenAI gateway's settler)
        self.on_charged: Any = lambda pack_id, quoted, charged: None
        self.rows: GroupCommit[RowWrite, None] = GroupCommit(
            db, _write_rows, records=_rows_records, max_weight=ROWS_BATCH_MAX, name="requests"
        )
        self.summaries = SummaryBatcher(signer, publish)

    def start(self) -> None:
        self.rows.start()
        self.summaries.start()

    async def wait_recorded(self, timeout_s: float = RECORD_WAIT_S) -> None:
        """Let the records of requests already answered land (bounded)."""
        if self._recording:
            await asyncio.wait(list(self._recording), timeout=timeout_s)

    async def stop(self) -> None:
        """Cancel what is still recording, announce the summaries collected, and stop the
        request-row writer (the runs are stopped first: they record here)."""
        for t in list(self._recording):
            t.cancel()
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        await self.summaries.stop()  # what finished is announced before the ledger closes
        await self.rows.stop()

    def sizes(self) -> dict[str, int]:
        return {
            "inference_recording": len(self._recording),
            "inference_summaries_pending": self.summaries.pending(),
        }

    async def write_rows(
        self, records: tuple[Record, ...], statements: Callable[[sqlite3.Connection], None]
    ) -> None:
        """Run ``statements`` in a write transaction storing ``records``, shared with the
        request-row writes queued meanwhile; returns once it is committed (durably when a
        record is durable)."""
        await self.rows.submit((records, statements))

    async def complete_request(
        self, request_id: str, text: str, latency_s: float, output_tokens: int | None = None
    ) -> dict[str, int]:
        """Record a finished run (result, summary, refund of unused tokens); returns the
        OpenAI-style usage."""
        with self.db.read() as conn:
            req = repo.get_request(conn, request_id)
        assert req is not None
        out_tokens = output_tokens
        if out_tokens is None:  # the node did not say: ask its tokenizer
            out_tokens = await self.count_tokens(req["model"], text) if text else 0
        billed = await self.finish(req, self.menu.entry(req["model"]), text, out_tokens, latency_s)
        return openai_usage(req["prompt_tokens"], billed)

    def record_later(
        self, request_id: str, text: str, latency_s: float, output_tokens: int | None
    ) -> None:
        """complete_request in the background, for a run whose answer goes out now."""
        self.track_recording(
            asyncio.create_task(
                self.complete_request(request_id, text, latency_s, output_tokens),
                name=f"record-{request_id[:10]}",
            )
        )

    def track_recording(self, task: asyncio.Task[Any]) -> None:
        """A task recording a request already answered: the daemon's stop waits for it."""
        self._recording.add(task)
        task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Task[Any]) -> None:
        self._recording.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("recording a finished request failed: {!r}", task.exception())

    async def fail_request(self, request_id: str, error: str) -> None:
        with self.db.read() as conn:
            req = repo.get_request(conn, request_id)
        assert req is not None
        await self.fail(req, error)

    async def finish(
        self, req: dict[str, Any], entry: ModelEntry, text: str, out_tokens: int, latency_s: float
    ) -> int:
        """Record a completed run; returns the output tokens billed (at most the asked)."""
        # never more than its quote, never below nothing: a refund never exceeds what was paid
        out_tokens = max(0, min(out_tokens, json.loads(req["params"])["max_new_tokens"]))
        actual = max(0, min(entry.cost(req["prompt_tokens"], out_tokens), req["cost"]))
        digest = result_hash(text)
        # the refund is published before the request shows as completed: a reader never
        # sees "completed" with its refund still to come
        refunded = await self._refund(req, repo.COMPLETED, req["cost"] - actual)
        answered = req.get("settle_state") is not None  # settled later, at its charge
        fields = {
            "status": repo.COMPLETED,
            "result_text": text,
            "result_hash": digest,
            "input_tokens": req["prompt_tokens"],
            "output_tokens": out_tokens,
            "latency_ms": latency_s * 1000,
            "updated_at": time.time(),
            **({"refunded": refunded} if refunded else {}),
            **({"charged": actual} if answered else {}),
        }
        await self.write_rows(
            _progress(refunded), lambda conn: repo.update_request(conn, req["request_id"], **fields)
        )
        if answered:
            self.on_charged(req["pack_id"], req["cost"], actual)
        self.summaries.add(results.summary(req, repo.COMPLETED, digest, out_tokens, latency_s))
        logger.debug(  # one line per request: at INFO it would cost more than the request
            "request {} completed: {} output tokens, {} of {} credits used",
            req["request_id"],
            out_tokens,
            actual,
            req["cost"],
        )
        return out_tokens

    async def fail(self, req: dict[str, Any], error: str) -> None:
        refunded = await self._refund(req, repo.FAILED, req["cost"])
        # "failed" and its refund become visible at once
        answered = req.get("settle_state") is not None  # nothing to settle: costs nothing
        fields = {
            "status": repo.FAILED,
            "error": error[:1000],
            "updated_at": time.time(),
            **({"refunded": refunded} if refunded else {}),
            **({"charged": 0} if answered else {}),
        }
        await self.write_rows(
            _progress(refunded), lambda conn: repo.update_request(conn, req["request_id"], **fields)
        )
        if answered:
            self.on_charged(req["pack_id"], req["cost"], 0)
        self.summaries.add(results.summary(req, repo.FAILED, None, 0, 0.0))
        logger.warning(
            "request {} failed ({}); {} credits refunded", req["request_id"], error, refunded
        )

    async def _refund(self, req: dict[str, Any], status: str, refund: int) -> int:
        """Publish the signed refund when ``refund`` > 0 and the request was certified.
        Returns the credits refunded."""
        env, refunded = results.refund_envelope(self.signer, req, status, refund)
        if env is not None:
            await self.publish([env], linger=True)  # not urgent: rides with the next push
        return refunded


def _progress(refunded: int) -> tuple[Record, ...]:
    """What recording a finished run writes: its progress, and the refund it records if
    any (never given twice: on disk before anything else sees it)."""
    return (repo.REQUEST_PROGRESS, repo.REFUNDS) if refunded else (repo.REQUEST_PROGRESS,)
