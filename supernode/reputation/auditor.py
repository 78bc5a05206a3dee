"""Audits, both sides: the auditor draws, checks and judges; the executor serves its
results to auditors (``rpc_audit_result``, beside ``call_audit_result`` that asks it).

Each epoch this member commits to a secret seed before the epoch begins and reveals it
after it ends (so an executor cannot know, while it runs a request, who will audit it).
For every completed request of another executor it checks whether its seed draws it
(rules.assigned at the executor's audit rate), and if so, audits it:

1. fetch the result from the executor with a signed request; not served in time (after
   bounded tries) is the verdict ``unavailable``;
2. the served output must be what the executor's signed summary says (hash), and its
   token counts must match the summary's (within a tokenizer round trip's slack);
3. no local node for the model: ``skipped`` (does not count);
4. greedy: run it again on the local node (in its low-priority lane); the same text
   passes. A different text is confirmed by scoring the executor's tokens in one forward
   pass: it fails only at a token that is not the local model's top choice by more than
   the tolerance, or where the executor stopped but the model would not have (a text cut
   short); otherwise it passes (a near-tie between machines);
5. sampled: the hash and count checks, and where the node can score, every token within
   the top ``k`` (the request's ``top_k``, else the 50 a Petals node samples from).

The verdict is a signed event (events.VERDICT) carrying the executor's summary as
evidence. Audits are bounded: at most ``audit_max_in_flight`` at once and
``audit_max_per_minute``; they run on the node's low-priority lane, never before a paid
request waiting there. A member's liveness observations of its peers (the probes'
answers) are signed once per epoch.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from typing import Any

from loguru import logger

from supernode.config import Settings
from supernode.crypto.envelope import Envelope, Hex32, Payload, open_envelope
from supernode.crypto.keys import Identity
from supernode.errors import REJECT, Conflict, Forbidden, NotFound, SupernodeError
from supernode.federation.gossip import Gossip
from supernode.federation.intake import Intake
from supernode.federation.network import NetworkFile
from supernode.federation.peer_http import PeerError
from supernode.federation.signer import Signer
from supernode.federation.transport import sign_transport
from supernode.inference.menu import Menu
from supernode.ledger import envelopes as env_repo
from supernode.ledger import inference as inference_repo
from supernode.ledger import reputation as repo
from supernode.ledger.db import Ledger
from supernode.petals.client.pool import NodePool
from supernode.reputation import rules
from supernode.reputation.book import ReputationBook
from supernode.reputation.clock import EpochClock
from supernode.reputation.events import LIVENESS, SEED_COMMIT, SEED_REVEAL, VERDICT
from supernode.reputation.judge import AuditResultPayload, judge

AUDIT_FETCH = "audit_fetch"  # transport: an auditor asks an executor for a result
AUDIT_RESULT = "audit_result"  # the executor's signed answer, to that auditor
AUDIT_RESULT_TTL_S = 600
DRAW_PAGE = 500  # summaries looked at per tick


class AuditFetchPayload(Payload):
    request_id: Hex32


class Auditor:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        db: Ledger,
        clock: EpochClock,
        book: ReputationBook,
        pool: NodePool,
        intake: Intake,
        gossip: Gossip,
        publish: Any,
        menu: Menu,
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.clock = clock
        self.book = book
        self.pool = pool
        self.intake = intake
        self.gossip = gossip
        self.publish = publish
        self.menu = menu
        self.signer = Signer(identity, network, settings.envelope_ttl_s)
        self._cursor: int | None = None  # inference_results rows looked at
        self._tasks: set[asyncio.Task[None]] = set()
        self._started: deque[float] = deque()  # audit start times in the last minute
        self._probes: dict[int, dict[str, list[int]]] = {}  # epoch -> peer -> [probes, fails]
        self.counts: dict[str, int] = {
            "assigned": 0,
            "done": 0,
            "passed": 0,
            "failed": 0,
            "unavailable": 0,
            "skipped": 0,
            "served": 0,
        }

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def sizes(self) -> dict[str, int]:
        return {"audits_running": len(self._tasks), "liveness_epochs": len(self._probes)}

    # -- the executor's side -----------------------------------------------------------
    def rpc_audit_result(self, raw: Any) -> dict[str, Any]:
        """A member's signed request for a result this daemon executed: the result, signed
        to that member. (Which member a seed assigns is secret until the epoch's reveal, so
        any other member may ask; every answer is signed and so is evidence.)"""
        env, p = self.intake.open_transport(raw, AUDIT_FETCH, AuditFetchPayload)
        if env.sender == self.me:
            raise Forbidden("a member never audits itself")
        with self.db.read() as conn:
            req = inference_repo.get_request(conn, p.request_id)
        if req is None:
            raise NotFound(f"request {p.request_id} was not executed here")
        if req["status"] != inference_repo.COMPLETED:
            raise Conflict(f"request is {req['status']}", reason=req["status"])
        self.counts["served"] += 1
        logger.info("audit: served request {} to {}", p.request_id[:12], env.sender)
        return self.signer.sign(
            AUDIT_RESULT,
            {
                "request_id": p.request_id,
                "model": req["model"],
                "prompt": req["prompt"],
                "params": json.loads(req["params"]),
                "output": req["result_text"] or "",
                "result_hash": req["result_hash"],
                "input_tokens": req["input_tokens"] or 0,
                "output_tokens": req["output_tokens"] or 0,
            },
            recipient=env.sender,
            ttl_s=AUDIT_RESULT_TTL_S,
        ).to_wire()

    async def call_audit_result(self, executor: str, request_id: str) -> AuditResultPayload:
        """Ask ``executor`` for a result (one try, bounded in time); PeerError or a
        SupernodeError when it does not serve it."""
        link = self.gossip.links.get(executor)
        if link is None:
            raise NotFound(f"{executor} is not a peer")
        body = sign_transport(
            self.identity, self.network, AUDIT_FETCH, executor, {"request_id": request_id}
        )
        resp = await link.client.post(
            f"{link.member.url}/audit_result", body, timeout_s=self.s.audit_fetch_timeout_s
        )
        if resp.status != 200:
            raise PeerError(f"HTTP {resp.status}: {resp.text[:200]}")
        env, p = open_envelope(
            resp.json(),
            AUDIT_RESULT,
            AuditResultPayload,
            network_id=self.network.network_id,
            chain_id=self.network.chain_id,
            me=self.me,
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
        )
        if env.sender != executor or p.request_id != request_id:
            raise PeerError("the answer is not that executor's for that request")
        return p

    # -- the job -----------------------------------------------------------------------
    async def tick(self) -> None:
        """One round: read the chain's epoch, update the tables, commit and reveal
        seeds, sign liveness, draw new audits and start the due ones."""
        await self.clock.refresh()
        for e in await self.book.update():
            self._probes.pop(e, None)
        if self.clock.epoch is None:
            return
        await self._seeds()
        await self._liveness()
        if self.s.audits_enabled:
            await self._draw()
            await self._start_due()

    def observe_probes(self, answered: dict[str, bool]) -> None:
        """The peer probe's answers (address -> answered), counted for this epoch."""
        e = self.clock.epoch
        if e is None:
            return
        per = self._probes.setdefault(e, {})
        for addr, ok in answered.items():
            c = per.setdefault(addr, [0, 0])
            c[0] += 1
            c[1] += 0 if ok else 1

    async def _seeds(self) -> None:
        head = self.clock.epoch
        assert head is not None
        nxt = head + 1
        with self.db.read() as conn:
            have = repo.seed_for(conn, nxt)
            to_reveal = repo.seeds_to_reveal(conn, head)
        if have is None or not have["committed"]:
            seed = have["seed"] if have else "0x" + secrets.token_bytes(32).hex()
            async with self.db.write(repo.SEEDS) as conn:  # on disk before it is committed
                repo.add_seed(conn, nxt, seed)
            env = self.signer.sign(
                SEED_COMMIT, {"epoch": nxt, "commitment": rules.commitment_of(seed)}
            )
            await self._publish(env)
            async with self.db.write(repo.SEEDS) as conn:
                repo.mark_seed(conn, nxt, "committed")
            logger.info("audit: committed a seed for epoch {}", nxt)
        for row in to_reveal:
            e = row["epoch"]
            if self.clock.start(e + 1) is None:
                continue  # its end is not readable yet
            closed = self.clock.close_time(e)
            if closed is not None and time.time() > closed:
                # too late to count (this daemon was down): given up, not retried
                logger.warning("audit: the seed of epoch {} was never revealed in time", e)
            else:
                env = self.signer.sign(SEED_REVEAL, {"epoch": e, "seed": row["seed"]})
                refused = await self._publish(env)
                if refused is not None and refused.verdict != REJECT:
                    continue  # refused for now (e.g. not ready here): again next round
                if refused is None:
                    logger.info("audit: revealed the seed of epoch {}", e)
            async with self.db.write(repo.SEEDS) as conn:
                repo.mark_seed(conn, e, "revealed")

    async def _liveness(self) -> None:
        head = self.clock.epoch
        assert head is not None
        for e in sorted(x for x in self._probes if x < head):
            per = self._probes.pop(e)
            with self.db.read() as conn:
                sent = repo.has_event(conn, self.me, e, LIVENESS)
            if sent or self.clock.start(e + 1) is None:
                continue
            obs = [
                {"subject": a, "probes": c[0], "failures": c[1]}
                for a, c in sorted(per.items())
                if a != self.me
            ]
            if obs:
                await self._publish(self.signer.sign(LIVENESS, {"epoch": e, "observations": obs}))

    async def _publish(self, env: Envelope) -> SupernodeError | None:
        """Store and push one of our events; the refusal, if this daemon's own intake
        refused it (a reject never passes later: the caller gives it up)."""
        try:
            await self.publish([env])
            return None
        except SupernodeError as exc:
            logger.warning("audit: {} {} refused here: {}", env.type, env.id[:12], exc)
            return exc

    async def _draw(self) -> None:
        """Look at the summaries stored since the last tick; queue the audits drawn."""
        if self._cursor is None:  # at start: from the oldest epoch still open
            last = self.clock.last_closed()
            since = self.clock.start(last + 1) if last is not None else 0
            if since is None:
                return
            with self.db.read() as conn:
                self._cursor = repo.summaries_before(conn, since)
        with self.db.read() as conn:
            rows = repo.summaries_since(conn, self._cursor, DRAW_PAGE)
        now = time.time()
        for s in rows:
            if s["executor"] != self.me and s["status"] == inference_repo.COMPLETED:
                epoch = self.clock.epoch_at(s["created_at"]) if s["created_at"] else None
                if epoch is None:
                    head_start = self.clock.start(self.clock.epoch or 0)
                    if head_start is None or (s["created_at"] or 0) >= head_start:
                        return  # not settled yet (a block to come may start its epoch)
                    self._cursor = s["id"]  # older than the epochs read: too late
                    continue
                closed = self.clock.close_time(epoch)
                if closed is None:  # too late to audit a closed epoch's request
                    with self.db.read() as conn:
                        mine = repo.seed_for(conn, epoch)
                    if mine is not None and mine["committed"]:
                        rate = self.book.rate_for(s["executor"], epoch)
                        if rate is None:
                            return  # its rate's table is not computed yet
                        if rules.assigned(mine["seed"], s["request_id"], rate):
                            async with self.db.write(repo.TASKS) as conn:
                                repo.add_task(
                                    conn,
                                    {
                                        "request_id": s["request_id"],
                                        "executor": s["executor"],
                                        "epoch": epoch,
                                        "state": "queued",
                                        "attempts": 0,
                                        "due_at": now + self.s.audit_delay_s,
                                    },
                                )
                            self.counts["assigned"] += 1
            self._cursor = s["id"]

    async def _start_due(self) -> None:
        now = time.time()
        while self._started and self._started[0] < now - 60:
            self._started.popleft()
        room = min(
            self.s.audit_max_in_flight - len(self._tasks),
            self.s.audit_max_per_minute - len(self._started),
        )
        if room <= 0:
            return
        with self.db.read() as conn:
            due = repo.due_tasks(conn, now, room)
        for task in due:
            if any(t.get_name() == task["request_id"] for t in self._tasks):
                continue
            t = asyncio.create_task(self._guarded(task), name=task["request_id"])
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
            self._started.append(now)

    # -- one audit ------------------------------------------------------------------------
    async def _guarded(self, task: dict[str, Any]) -> None:
        """An audit that fails unexpectedly is logged and tried again later, never spun on."""
        try:
            await self._audit(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one audit must not take the auditor down
            logger.exception("audit {} failed; trying again later", task["request_id"][:12])
            async with self.db.write(repo.TASKS) as conn:
                repo.update_task(
                    conn, task["request_id"], due_at=time.time() + 30 * self.s.audit_retry_s
                )

    async def _audit(self, task: dict[str, Any]) -> None:
        request_id, executor = task["request_id"], task["executor"]
        try:
            served = await self.call_audit_result(executor, request_id)
        except (PeerError, SupernodeError, ValueError) as exc:
            attempts = task["attempts"] + 1
            if attempts < self.s.audit_fetch_tries:
                async with self.db.write(repo.TASKS) as conn:
                    repo.update_task(
                        conn,
                        request_id,
                        attempts=attempts,
                        due_at=time.time() + self.s.audit_retry_s * attempts,
                    )
                logger.info(
                    "audit {}: {} did not serve it ({}); trying again",
                    request_id[:12],
                    executor,
                    exc,
                )
                return
            await self._verdict(task, rules.UNAVAILABLE, None, f"not served: {exc}"[:500])
            return
        try:
            with self.db.read() as conn:
                summary = repo.summary_of(conn, request_id)
            verdict, position, detail = await judge(
                served, summary, self.pool, self.menu, self.s.audit_tolerance
            )
        except SupernodeError as exc:  # the local node failed: try again later
            async with self.db.write(repo.TASKS) as conn:
                repo.update_task(conn, request_id, due_at=time.time() + self.s.audit_retry_s)
            logger.info("audit {}: cannot check now ({}); later", request_id[:12], exc)
            return
        await self._verdict(task, verdict, position, detail)

    async def _verdict(
        self, task: dict[str, Any], verdict: str, position: int | None, detail: str
    ) -> None:
        with self.db.read() as conn:
            summary = repo.summary_of(conn, task["request_id"])
            raw = env_repo.raws_by_id(conn, [summary["envelope_id"]], self.me) if summary else []
        if not raw:
            logger.warning("audit {}: its summary is gone; no verdict", task["request_id"][:12])
            verdict, detail = rules.SKIPPED, "summary gone"
        else:
            env = self.signer.sign(
                VERDICT,
                {
                    "epoch": task["epoch"],
                    "request_id": task["request_id"],
                    "executor": task["executor"],
                    "verdict": verdict,
                    "position": position,
                    "detail": detail,
                    "summary": json.loads(raw[0]),
                },
            )
            await self._publish(env)
        async with self.db.write(repo.TASKS) as conn:
            repo.update_task(conn, task["request_id"], state="done", verdict=verdict, detail=detail)
        self.counts["done"] += 1
        self.counts[{"pass": "passed", "fail": "failed"}.get(verdict, verdict)] += 1
        log = logger.warning if verdict == rules.FAIL else logger.info
        log(
            "audit {} of {}: {}{} ({})",
            task["request_id"][:12],
            task["executor"],
            verdict,
            f" at token {position}" if position is not None else "",
            detail,
        )
