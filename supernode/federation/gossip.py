"""Gossip: push every new envelope to its peers, and pull what was missed.

Push: one link per peer, one keep-alive HTTP client each. A link sends what is queued as
one batch (up to push_batch_max), so batching grows with load and costs no latency when
idle. What is not urgent (result summaries, refunds) may linger up to ``linger_s`` and
travel with the next push instead of making its own. A failed batch is retried with
exponential back-off (bounded); when the retries run out the peer is marked down for a
while and its queue is dropped: anti-entropy delivers it when the peer is back (the peer
pulls from us).

Pull (anti-entropy): a job asks each peer, in turn, for the ids after its cursor (the
peer's local log position), page by page, fetches those it does not hold, and stores them
through the intake. Push has usually delivered them all, so a round moves ids, not
envelopes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from supernode.crypto.keys import Identity
from supernode.errors import BadRequest
from supernode.federation.handlers import Checked
from supernode.federation.intake import Intake
from supernode.federation.network import Member, NetworkFile
from supernode.federation.peer_http import PeerClient, PeerError, PeerHTTP, PeerUnreachable
from supernode.federation.transport import (
    ENVELOPE_FETCH,
    GOSSIP_BATCH,
    SYNC_REQUEST,
    EnvelopeFetchPayload,
    GossipBatchPayload,
    SyncRequestPayload,
    batch_body,
    fetch_body,
    sign_transport,
)
from supernode.ledger import MAX_INTEGER
from supernode.ledger import envelopes as env_repo
from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger


@dataclass
class PushSettings:
    timeout_s: float
    retries: int
    backoff_s: float
    batch_max: int
    queue_max: int
    linger_s: float = 0.0


class PeerLink:
    def __init__(
        self,
        member: Member,
        identity: Identity,
        network: NetworkFile,
        cfg: PushSettings,
        client: PeerClient,
    ) -> None:
        self.member = member
        self.identity = identity
        self.network = network
        self.cfg = cfg
        self.client = client
        self.queue: deque[tuple[str, bytes, asyncio.Future[Any] | None]] = deque()
        self.wakeup = asyncio.Event()
        self.down_until = 0.0
        self.sent = 0
        self.batches = 0  # batches taken (sent / batches: the mean batch)
        self.failed_batches = 0
        self.dropped = 0
        self.last_error: str | None = None
        # when the peer last answered us, and when a call to it last failed (pushes and
        # anti-entropy pulls): what /ready counts as reachable
        self.answered_at = 0.0
        self.failed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._flush: asyncio.TimerHandle | None = None  # wakes the link for lingering items

    def reachable(self, now: float, window_s: float) -> bool:
        """It answered within ``window_s`` and nothing failed since."""
        return self.answered_at > self.failed_at and now - self.answered_at <= window_s

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"push-{self.member.address[:10]}")

    async def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._drop_all("daemon stopping")

    def enqueue(
        self, env_id: str, raw: bytes, waiter: asyncio.Future[Any] | None, linger: bool = False
    ) -> None:
        if time.time() < self.down_until:
            self.dropped += 1
            if waiter is not None and not waiter.done():
                waiter.set_result({"ok": False, "error": f"peer down: {self.last_error}"})
            return
        if len(self.queue) >= self.cfg.queue_max:
            _, _, old = self.queue.popleft()
            self.dropped += 1
            if old is not None and not old.done():
                old.set_result({"ok": False, "error": "push queue full"})
        self.queue.append((env_id, raw, waiter))
        if not linger or self.cfg.linger_s <= 0:
            self.wakeup.set()
        elif self._flush is None:  # it goes with the next push, or when the linger ends
            self._flush = asyncio.get_running_loop().call_later(
                self.cfg.linger_s, self._linger_over
            )

    def _linger_over(self) -> None:
        self._flush = None
        self.wakeup.set()

    def _drop_all(self, why: str) -> None:
        while self.queue:
            _, _, fut = self.queue.popleft()
            self.dropped += 1
            if fut is not None and not fut.done():
                fut.set_result({"ok": False, "error": why})

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self._flush is not None:  # lingering items go with this push
                self._flush.cancel()
                self._flush = None
            while self.queue:
                n = min(len(self.queue), self.cfg.batch_max)
                batch = [self.queue.popleft() for _ in range(n)]
                result = await self._send(batch)
                for _, _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_result(result)
                if not result["ok"]:
                    self._drop_all(f"peer down: {result['error']}")

    async def _send(self, batch: list[tuple[str, bytes, Any]]) -> dict[str, Any]:
        ids = [b[0] for b in batch]
        raws = [b[1] for b in batch]
        delay = self.cfg.backoff_s
        error = ""
        for attempt in range(self.cfg.retries + 1):
            body = batch_body(
                self.identity,
                self.network.network_id,
                self.network.chain_id,
                self.member.address,
                ids,
                raws,
            )
            try:
                resp = await self.client.post(
                    f"{self.member.url}/p2p/envelopes", body, timeout_s=self.cfg.timeout_s
                )
                if resp.status == 200:
                    self.sent += len(batch)
                    self.batches += 1
                    self.last_error = None
                    self.answered_at = time.time()
                    return {"ok": True, **resp.json()}
                error = f"HTTP {resp.status}: {resp.text[:200]}"
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    break  # refused, not failed: retrying will not help
            except (PeerUnreachable, ValueError) as exc:
                error = str(exc)
            if attempt < self.cfg.retries:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
        self.failed_batches += 1
        self.last_error = error
        self.failed_at = time.time()
        self.down_until = self.failed_at + delay
        logger.warning(
            "push of {} envelopes to {} failed ({}); peer marked down for {:.1f} s, "
            "anti-entropy will deliver",
            len(batch),
            self.member.address,
            error,
            delay,
        )
        return {"ok": False, "error": error}


class Gossip:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        db: Ledger,
        intake: Intake,
        push: PushSettings,
        page: int,
        pull_timeout_s: float,
        round_s: float,
        peer_client: Callable[[Member], PeerClient] = lambda _member: PeerHTTP(),
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.db = db
        self.intake = intake
        self.page = page
        self.pull_timeout_s = pull_timeout_s
        self.round_s = round_s
        self.batch_max = push.batch_max
        self.links: dict[str, PeerLink] = {}
        self.last_probe: dict[str, bool] = {}  # the last probe's answers, by peer
        for m in network.members:
            if m.address == self.me:
                continue
            self.links[m.address] = PeerLink(m, identity, network, push, peer_client(m))
        self.pulled = 0

    def reachable(self, window_s: float) -> list[str]:
        """The peers that answered within ``window_s`` with no failure since."""
        now = time.time()
        return [a for a, link in self.links.items() if link.reachable(now, window_s)]

    async def probe(self, timeout_s: float) -> int:
        """Ask every peer's /health at once (bounded by ``timeout_s``), so that a peer that
        stopped answering is known within seconds; returns how many answered."""

        async def one(link: PeerLink) -> bool:
            try:
                resp = await link.client.get(f"{link.member.url}/health", {}, timeout_s=timeout_s)
            except PeerError:
                resp = None
            if resp is not None and resp.status == 200:
                link.answered_at = time.time()
                return True
            link.failed_at = time.time()
            return False

        links = list(self.links.values())
        answers = await asyncio.gather(*(one(link) for link in links))
        self.last_probe = {link.member.address: ok for link, ok in zip(links, answers, strict=True)}
        return sum(answers)

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
        for link in self.links.values():
            await link.stop()
        for link in self.links.values():
            await link.client.close()

    def push(
        self, items: list[Checked], *, wait: bool = False, linger: bool = False
    ) -> list[asyncio.Future[Any]]:
        """Queue envelopes to their peers: to the recipient only, or to every peer. With
        ``linger`` they may wait up to linger_s for another push to travel with."""
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = []
        for c in items:
            targets = (
                [self.links[c.env.recipient]]
                if c.env.recipient in self.links
                else []
                if c.env.recipient is not None
                else list(self.links.values())
            )
            for link in targets:
                fut = loop.create_future() if wait else None
                if fut is not None:
                    waiters.append(fut)
                link.enqueue(c.env.id, c.raw, fut, linger)
        return waiters

    async def wait_delivered(
        self, waiters: list[asyncio.Future[Any]], timeout_s: float
    ) -> list[dict[str, Any]]:
        if not waiters:
            return []
        done, _ = await asyncio.wait(waiters, timeout=timeout_s)
        return [w.result() if w in done else {"ok": False, "error": "timeout"} for w in waiters]

    # -- the peer side: what /p2p/envelopes, /p2p/sync and /p2p/fetch answer -------------
    async def rpc_envelopes(self, body: Any) -> dict[str, Any]:
        """A peer pushes envelopes: ``{"batch": <gossip_batch>, "envelopes": [...]}``. The
        batch, signed by the peer handing them over, names their ids: a peer whose batch
        does not match what it sent is penalised; each envelope goes through the intake."""
        if not isinstance(body, dict) or set(body) != {"batch", "envelopes"}:
            raise BadRequest('expected {"batch": ..., "envelopes": [...]}')
        batch, p = self.intake.open_transport(body["batch"], GOSSIP_BATCH, GossipBatchPayload)
        envs = body["envelopes"]
        if not isinstance(envs, list):
            raise BadRequest("envelopes must be a list")
        if len(envs) > self.batch_max * 4:
            raise BadRequest(f"more than {self.batch_max * 4} envelopes in one batch")
        claimed = [e.get("id") if isinstance(e, dict) else None for e in envs]
        if claimed != p.ids:
            mismatch = {"reason": "batch_mismatch", "detail": "ids differ from the signed batch"}
            await self.intake.scoring.penalise(batch.sender, [mismatch])
            raise BadRequest("envelope ids differ from the ids the batch signs")
        return (await self.intake.ingest(envs, via=batch.sender)).to_dict()

    def rpc_sync(self, raw: Any) -> dict[str, Any]:
        """Anti-entropy, step 1: the ids after the caller's cursor in our log, oldest
        first: ``{"ids": [...], "next_cursor": n, "more": bool}``."""
        req, p = self.intake.open_transport(raw, SYNC_REQUEST, SyncRequestPayload)
        after, limit = p.after, min(p.limit, self.page)
        with self.db.read() as conn:
            # The end of the log first: every row up to it is committed (one writer, rising
            # seq), so a cursor moved to it skips nothing that commits meanwhile.
            end = env_repo.last_seq(conn)
            if after > end:
                after = 0  # our log is shorter than the caller's cursor: it was reset
            rows = env_repo.ids_after(conn, after, end, req.sender, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        # all visible rows up to `end` were listed: move past the invisible ones too
        cursor = rows[-1][0] if more else max(after, end)
        return {"ids": [r[1] for r in rows], "next_cursor": cursor, "more": more}

    def rpc_fetch(self, raw: Any) -> bytes:
        """Anti-entropy, step 2: the envelopes with these ids the caller may see (JSON
        bytes, the stored envelopes spliced in; unknown ids are left out)."""
        req, p = self.intake.open_transport(raw, ENVELOPE_FETCH, EnvelopeFetchPayload)
        if len(p.ids) > self.page:
            raise BadRequest(f"envelope_fetch takes at most {self.page} ids")
        with self.db.read() as conn:
            return fetch_body(env_repo.raws_by_id(conn, p.ids, req.sender))

    # -- anti-entropy ----------------------------------------------------------------
    async def _call(self, link: PeerLink, path: str, type_: str, payload: dict[str, Any]) -> Any:
        body = sign_transport(self.identity, self.network, type_, link.member.address, payload)
        resp = await link.client.post(
            f"{link.member.url}{path}", body, timeout_s=self.pull_timeout_s
        )
        if resp.status != 200:
            raise PeerError(f"HTTP {resp.status}: {resp.text[:200]}")
        return resp.json()

    async def _pull_peer(self, link: PeerLink, cursor: int, deadline: float) -> tuple[int, int]:
        """Pull pages from one peer until it has nothing more; returns (cursor, stored)."""
        stored = 0
        while time.time() < deadline:
            data = await self._call(
                link, "/p2p/sync", SYNC_REQUEST, {"after": cursor, "limit": self.page}
            )
            ids, next_cursor, more = data["ids"], data["next_cursor"], data["more"]
            if not isinstance(next_cursor, int) or not 0 <= next_cursor <= MAX_INTEGER:
                raise PeerError(f"next_cursor {next_cursor!r} is not a cursor")
            if ids:
                with self.db.read() as conn:
                    known = env_repo.known_ids(conn, ids)
                missing = [i for i in ids if i not in known]
                if missing:
                    envs = await self._call(link, "/p2p/fetch", ENVELOPE_FETCH, {"ids": missing})
                    report = await self.intake.ingest(envs["envelopes"], via=link.member.address)
                    stored += len(report.accepted)
            if next_cursor != cursor:
                cursor = next_cursor
                async with self.db.write(peers_repo.PEERS) as conn:
                    peers_repo.set_cursor(conn, link.member.address, cursor)
            if not more:
                break
        return cursor, stored

    async def anti_entropy_round(self) -> int:
        """One round over every peer (bounded by round_s). Returns envelopes stored."""
        deadline = time.time() + self.round_s
        with self.db.read() as conn:
            cursors = {r["address"]: r["sync_cursor"] for r in peers_repo.all_peers(conn)}
        total = 0
        for addr, link in self.links.items():
            if time.time() >= deadline:
                break
            try:
                _, stored = await self._pull_peer(link, cursors.get(addr, 0), deadline)
            except (PeerError, ValueError, KeyError) as exc:
                link.failed_at = time.time()
                async with self.db.write(peers_repo.PEERS) as conn:
                    peers_repo.mark_contact(conn, addr, time.time(), f"pull: {exc!r}"[:300])
                continue
            total += stored
            link.answered_at = time.time()
            async with self.db.write(peers_repo.PEERS) as conn:
                peers_repo.mark_contact(conn, addr, time.time(), None)
            if link.down_until and time.time() < link.down_until:
                link.down_until = 0.0  # it answered: push to it again
        if total:
            logger.info("anti-entropy stored {} envelopes", total)
        self.pulled += total
        return total
