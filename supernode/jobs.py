"""Background jobs on one apscheduler per daemon. No job overlaps itself
(max_instances=1, coalesce), each has a timeout, and all end with the daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger

from supernode.ledger import envelopes as env_repo

if TYPE_CHECKING:
    from supernode.node import Supernode

HOUSEKEEPING_INTERVAL_S = 600.0


def _guarded(name: str, timeout_s: float, fn: Callable[[], Awaitable[object]]):  # type: ignore[no-untyped-def]
    async def run() -> None:
        try:
            await asyncio.wait_for(fn(), timeout=timeout_s)
        except TimeoutError:
            logger.warning("job {} timed out after {:.0f} s", name, timeout_s)
        except asyncio.CancelledError:
            logger.debug("job {} cancelled (daemon stopping)", name)
        except Exception:  # noqa: BLE001 - a job failing must not kill the scheduler
            logger.exception("job {} failed", name)

    return run


def start_scheduler(node: Supernode) -> AsyncIOScheduler:
    s = node.settings
    sched = AsyncIOScheduler(job_defaults={"max_instances": 1, "coalesce": True})

    async def membership() -> None:
        if node.chain_ok is not True:
            await node.check_chain()
        await node.membership.refresh()

    async def housekeeping() -> None:
        await node.credits.prune_quotes()
        await node.inference.prune_quotes()
        used = await node.challenges.prune()
        if used:
            logger.info("housekeeping forgot {} answered challenges past their expiry", used)
        async with node.db.write(env_repo.SEEN) as conn:
            n = env_repo.prune_expired(conn, time.time() - s.clock_skew_s)
        if n:
            logger.info("housekeeping pruned {} expired envelopes from the seen-set", n)

    def add(
        name: str,
        fn: Callable[[], Awaitable[object]],
        every_s: float,
        timeout_s: float,
        first_in_s: float = 0.0,
    ) -> None:
        sched.add_job(
            _guarded(name, timeout_s, fn),
            "interval",
            seconds=every_s,
            id=name,
            name=name,
            next_run_time=_soon(first_in_s),
        )

    add(
        "anti_entropy",
        node.gossip.anti_entropy_round,
        s.anti_entropy_interval_s,
        s.anti_entropy_round_s + s.anti_entropy_timeout_s,
        first_in_s=0.2,
    )

    async def peer_probe() -> None:
        await node.gossip.probe(s.peer_probe_timeout_s)
        node.auditor.observe_probes(node.gossip.last_probe)

    add(
        "peer_probe",
        peer_probe,
        s.peer_probe_interval_s,
        s.peer_probe_timeout_s + 1.0,
    )
    add(
        "membership",
        membership,
        s.membership_interval_s,
        s.chain_timeout_s * (len(node.network.members) + 2) * (s.chain_read_retries + 1),
    )
    add(
        "pending_purchases",
        node.credits.finish_pending,
        s.pending_purchase_interval_s,
        s.quorum_timeout_s * 4 + s.chain_timeout_s * 4,
        first_in_s=1.0,
    )
    add(
        "node_health",
        node.pool.check_health,
        s.node_health_interval_s,
        s.node_connect_timeout_s + s.node_request_timeout_s,
        first_in_s=s.node_health_interval_s,
    )
    add(
        "audits",
        node.auditor.tick,
        s.audit_interval_s,
        s.audit_fetch_timeout_s + s.chain_timeout_s * 8 * (s.chain_read_retries + 1),
        first_in_s=1.0,
    )
    add(
        "close_reservations",
        node.openai.close_reservations,
        s.reservation_close_interval_s,
        s.quorum_timeout_s * 4,
        first_in_s=2.0,
    )
    add("housekeeping", housekeeping, HOUSEKEEPING_INTERVAL_S, 60.0, first_in_s=30.0)
    sched.start()
    return sched


def _soon(seconds: float):  # type: ignore[no-untyped-def]
    from datetime import datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)
