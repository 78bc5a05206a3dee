"""Answering at once from a reservation, and settling afterwards in batches.

A delegate is the only spender of its reservation's pack, so it needs no quorum before it
answers: it checks that the request fits what the reservation holds (less what it has
answered and not yet settled: ``outstanding``) and within ``unsettled_max_credits``,
writes the request's row durably (``settle_state`` "open"), and answers. Each run sets
the request's charge (unused tokens not charged: no refund is ever needed). Every
``settle_interval_s``, or at once when a request waits on the bound, the settler signs
one settlement order per reservation listing the requests whose charge is known (at most
SETTLE_ITEMS_MAX), journals it with them before asking for votes, and gets it certified
like any spend: one quorum round for all of them.

Crash and restart: a request answered whose run did not finish is charged its quote; a
journaled settlement is asked again as it was (members that voted for it vote the same;
one that expired unvoted is void and its requests go in the next), so no request is lost
and none is charged twice. A voter down only delays a settlement: it is asked again
next round. The federation checks every settlement like a spend: it never certifies more
than the reservation holds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from loguru import logger

from supernode.credits.orders import SETTLE_ITEMS_MAX, Order, settlement_id
from supernode.crypto.canonical import canonical_json
from supernode.errors import Refused, SupernodeError, Unavailable
from supernode.inference.service import InferenceService
from supernode.ledger import settlements as repo
from supernode.ledger import spends as spends_repo
from supernode.locks import KeyedLock

STOP_SETTLE_S = 5.0  # at stop, how long the last settlement round may take
# a settlement refused for one of these can never be certified: its requests are unpaid
NEVER = frozenset({"delegation_revoked", "delegation_expired", "unknown_pack", "not_owner"})


class Settler:
    def __init__(
        self,
        svc: InferenceService,
        locks: KeyedLock,
        sign_order: Callable[..., Order],
    ) -> None:
        self.svc = svc
        self.locks = locks  # the gateway's, one per reservation pack
        self.sign_order = sign_order
        self.outstanding: dict[str, int] = {}  # pack -> credits answered, not certified
        self._due = asyncio.Event()  # settle now (a request waits on the bound)
        self._progress = asyncio.Event()  # outstanding fell somewhere
        self._task: asyncio.Task[None] | None = None
        svc.recorder.on_charged = self.charged

    # -- start and stop -----------------------------------------------------------------
    async def start(self) -> None:
        async with self.svc.db.write(repo.ANSWERED) as conn:
            dead = repo.charge_dead_runs(conn)
        if dead:
            logger.warning("{} requests answered before a restart are charged their quote", dead)
        with self.svc.db.read() as conn:
            self.outstanding = repo.outstanding(conn)
        self._task = asyncio.create_task(self._loop(), name="settler")

    async def stop(self) -> None:
        """Stop the loop, then one last round (bounded): what was answered is settled
        now if the quorum answers, else at the next start."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            await asyncio.wait_for(self.settle_all(), STOP_SETTLE_S)
        except TimeoutError:
            logger.warning("settlements left for the next start")

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), self.svc.s.settle_interval_s)
            except TimeoutError:
                pass
            self._due.clear()
            await self.settle_all()

    # -- answering ------------------------------------------------------------------------
    async def admit(self, pack_id: str, cost: int) -> None:
        """Count ``cost`` as answered on the reservation, once it fits: within what the
        reservation holds less what is answered and not certified (else 429, as for an
        exhausted quota), and within ``unsettled_max_credits`` (else it waits for a
        settlement; 503 if none comes in time). The caller writes the request, or gives
        the credits back with ``release``."""
        deadline = time.monotonic() + 2 * self.svc.s.quorum_timeout_s
        while True:
            with self.svc.db.read() as conn:
                pack = spends_repo.pack_state(conn, pack_id)
            held = pack["remaining_credits"] if pack else 0
            out = self.outstanding.get(pack_id, 0)
            if out + cost > held:
                raise Refused(
                    f"this key's reservation holds {held} credits, {out} of them taken by "
                    f"requests answered and not yet settled; this request may cost {cost}",
                    reason="insufficient_credits",
                )
            if out == 0 or out + cost <= self.svc.s.unsettled_max_credits:
                self.outstanding[pack_id] = out + cost
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"{out} credits of this key are answered and not yet settled (at most "
                    f"{self.svc.s.unsettled_max_credits}); the federation is slow to settle",
                    reason="settlement_behind",
                )
            self._due.set()
            progress = self._progress
            try:
                await asyncio.wait_for(progress.wait(), left)
            except TimeoutError:
                pass

    def release(self, pack_id: str, credits: int) -> None:
        """``credits`` counted by admit are not answered after all (or certified now)."""
        left = self.outstanding.get(pack_id, 0) - credits
        if left > 0:
            self.outstanding[pack_id] = left
        else:
            self.outstanding.pop(pack_id, None)
        self._progress.set()
        self._progress = asyncio.Event()

    def charged(self, pack_id: str, quoted: int, charged: int) -> None:
        """A request's run set its charge: the rest of its quote is free again."""
        self.release(pack_id, quoted - charged)

    # -- settling -------------------------------------------------------------------------
    async def settle_all(self) -> int:
        """A settlement round: every reservation with requests to settle. Returns the
        requests settled."""
        with self.svc.db.read() as conn:
            packs = repo.packs_due(conn)
        settled = 0
        for pack_id in packs:
            try:
                settled += await self.settle(pack_id)
            except SupernodeError as exc:
                logger.warning("reservation {}: not settled yet: {}", pack_id, exc)
        return settled

    async def settle(self, pack_id: str) -> int:
        """Settle the reservation's requests whose charge is known: the journaled
        settlement first, if one is pending. Returns the requests settled."""
        async with self.locks.hold(pack_id):
            with self.svc.db.read() as conn:
                pending = repo.pending(conn, pack_id)
            if pending is not None:
                order = self.svc.voter.parse(json.loads(pending["order"]))
            else:
                order = await self._journal(pack_id)
                if order is None:
                    return 0
            return await self._certify(order)

    async def _journal(self, pack_id: str) -> Order | None:
        """Sign the next settlement and write it, with its requests, before anyone is
        asked (so the same order is asked again after a crash). None: nothing to settle."""
        async with self.svc.db.write(repo.SETTLEMENTS) as conn:
            repo.settle_free(conn, pack_id)
            rows = repo.due(conn, pack_id, SETTLE_ITEMS_MAX)
            if not rows:
                return None
            ids = [r["request_id"] for r in rows]
            order = self.sign_order(
                pack_id,
                sum(r["charged"] for r in rows),
                settlement_id(ids),
                settle=[{"request_id": r["request_id"], "amount": r["charged"]} for r in rows],
            )
            repo.add(
                conn,
                {
                    "order_id": order.id,
                    "pack_id": pack_id,
                    "sequence": order.sequence,
                    "amount": order.amount,
                    "order": canonical_json(order.to_wire()),
                    "created_at": time.time(),
                },
                ids,
            )
        return order

    async def _certify(self, order: Order) -> int:
        items = len(order.p.settle or ())
        try:
            await self.svc.executor.certify(order)
        except Refused as exc:
            if exc.reason == "order_expired":  # nobody voted for it: its requests go again
                async with self.svc.db.write(repo.SETTLEMENTS) as conn:
                    repo.finish(conn, order.id, certified=False)
                logger.info("settlement {} expired unvoted; signing another", order.id)
                return 0
            if exc.reason in NEVER:
                async with self.svc.db.write(repo.SETTLEMENTS) as conn:
                    repo.refuse(conn, order.id)
                self.release(order.pack_id, order.amount)
                logger.error(
                    "settlement {} of reservation {} refused for good ({}): {} requests, {} "
                    "credits answered and never paid",
                    order.id,
                    order.pack_id,
                    exc.reason,
                    items,
                    order.amount,
                )
                return 0
            raise
        async with self.svc.db.write(repo.SETTLEMENTS) as conn:
            repo.finish(conn, order.id, certified=True)
        self.release(order.pack_id, order.amount)
        logger.info(
            "reservation {}: {} requests settled at sequence {} ({} credits)",
            order.pack_id,
            items,
            order.sequence,
            order.amount,
        )
        return items

    def unsettled(self, pack_id: str) -> int:
        with self.svc.db.read() as conn:
            return repo.unsettled(conn, pack_id)

    def sizes(self) -> dict[str, int]:
        return {"openai_outstanding_reservations": len(self.outstanding)}
