"""Result summaries signed many to an envelope.

Every member checks the signature of every summary an executor announces; one envelope per
request made that check most of what a request cost the members. The executor collects
the summaries of the runs that finish within ``SUMMARY_LINGER_S`` (or SUMMARIES_MAX of
them, whichever comes first) and signs them as one ``inference_results`` envelope, which
it stores and pushes like any of its own. A summary is added once its request's row is
written, so a member that audits it finds the result there. At stop, what is collected is
announced before the ledger closes; a crash loses at most the last ``SUMMARY_LINGER_S`` of
summaries (those requests go unaudited; their charges and settlements do not depend on
them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from supernode.crypto.envelope import Envelope
from supernode.federation.signer import Signer
from supernode.inference.results import RESULT_SUMMARIES, SUMMARIES_MAX

SUMMARY_LINGER_S = 0.2  # how long a summary may wait for others to share its envelope
STOP_WAIT_S = 10.0  # at stop, how long announcing what is collected may take


class SummaryBatcher:
    def __init__(
        self,
        signer: Signer,
        publish: Callable[..., Awaitable[Any]],
        linger_s: float = SUMMARY_LINGER_S,
    ) -> None:
        self.signer = signer
        self.publish = publish  # (envelopes, linger=...) -> stored and pushed
        self.linger_s = linger_s
        self._items: list[dict[str, Any]] = []
        self._wake = asyncio.Event()  # something to announce
        self._full = asyncio.Event()  # SUMMARIES_MAX of them: at once
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.envelopes = 0  # signed so far (for /metrics)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="summaries")

    async def stop(self) -> None:
        """Announce what is collected (bounded), then stop the loop: a batch is never cut
        in the middle of being stored."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_WAIT_S)
        except TimeoutError:
            logger.error("{} result summaries not announced at stop", len(self._items))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def add(self, summary: dict[str, Any]) -> None:
        self._items.append(summary)
        self._wake.set()
        if len(self._items) >= SUMMARIES_MAX:
            self._full.set()

    def pending(self) -> int:
        return len(self._items)

    def sign(self, items: list[dict[str, Any]]) -> Envelope:
        return self.signer.sign(RESULT_SUMMARIES, {"results": items})

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            if len(self._items) < SUMMARIES_MAX:
                try:
                    await asyncio.wait_for(self._full.wait(), self.linger_s)
                except TimeoutError:
                    pass
            await self._drain()
        await self._drain()

    async def _drain(self) -> None:
        self._wake.clear()
        self._full.clear()
        while self._items:
            batch, self._items = self._items[:SUMMARIES_MAX], self._items[SUMMARIES_MAX:]
            try:
                await self.publish([self.sign(batch)], linger=True)
                self.envelopes += 1
            except Exception as exc:  # noqa: BLE001 - the loop goes on; these are lost
                logger.error("{} result summaries not announced: {!r}", len(batch), exc)
