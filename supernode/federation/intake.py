"""Intake: every envelope from a peer, a pull, or this daemon goes through here.

Order (cheap first): schema and size; id recomputed; seen before (memory,
then the ledger); sender banned; sender a member; network/chain/recipient binding and
time window; signature; the type's business rule. Then one group-committed write.

Verdicts follow gossipsub v1.1: *accept* (stored), *ignore* (duplicate, expired, from a
banned sender: no penalty), *reject* (invalid: the peer that handed it over is penalised).
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pydantic import ValidationError

from supernode.crypto.canonical import CanonicalError, canonical_json
from supernode.crypto.envelope import Envelope, EnvelopeError, check_envelope, check_id
from supernode.errors import REJECT, SupernodeError
from supernode.federation.handlers import Checked, HandlerRegistry
from supernode.federation.network import NetworkFile
from supernode.federation.scoring import PeerScoring
from supernode.federation.transport import P, verify_transport
from supernode.ledger import envelopes as env_repo
from supernode.ledger.db import Ledger, Record
from supernode.ledger.group_commit import GroupCommit

RECENT_IDS = 200_000  # ids remembered in memory to drop duplicates without a query


@dataclass
class IngestReport:
    accepted: list[str] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "ignored": self.ignored,
        }


def _verdict(env_id: str | None, exc: SupernodeError) -> dict[str, Any]:
    return {"envelope_id": env_id, "reason": exc.reason or exc.code, "detail": exc.detail}


class Intake:
    def __init__(
        self,
        *,
        network: NetworkFile,
        me: str,
        db: Ledger,
        scoring: PeerScoring,
        registry: HandlerRegistry,
        clock_skew_s: int,
        max_ttl_s: int,
        max_envelope_bytes: int,
        write_batch_max: int,
    ) -> None:
        self.network = network
        self.me = me
        self.db = db
        self.scoring = scoring
        self.registry = registry
        self.clock_skew_s = clock_skew_s
        self.max_ttl_s = max_ttl_s
        self.max_envelope_bytes = max_envelope_bytes
        self.members = {m.address for m in network.members}
        self.writer: GroupCommit[list[Checked], list[bool]] = GroupCommit(
            db,
            self._apply,
            max_weight=write_batch_max,
            weight=len,
            records=self._records,
            name="intake",
        )
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Called with the envelopes newly stored (after commit): metrics, gossip, streams.
        self.on_stored: list[Callable[[list[Checked], str | None], None]] = []
        self.counts: dict[str, int] = {}

    # -- bookkeeping -----------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {"intake_recent_ids": len(self._recent), "intake_counts": len(self.counts)}

    def _remember(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._recent[i] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # -- checks ----------------------------------------------------------------------
    def _parse(self, raw: Any) -> tuple[Envelope, bytes, bytes]:
        if not isinstance(raw, dict):
            raise EnvelopeError("malformed", "an envelope is a JSON object")
        try:
            env = Envelope.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise EnvelopeError("malformed", f"{where}: {first.get('msg', 'invalid')}") from exc
        try:
            body = canonical_json(env.to_wire())
        except CanonicalError as exc:
            raise EnvelopeError("bad_payload", exc.detail) from exc
        if len(body) > self.max_envelope_bytes:
            raise EnvelopeError("too_large", f"{len(body)} bytes > {self.max_envelope_bytes}")
        digest = check_id(env)
        return env, body, digest

    def _check(self, env: Envelope, digest: bytes, now: float) -> Any:
        if self.scoring.banned_until(env.sender) is not None:
            raise EnvelopeError("sender_banned", env.sender, penalise=False)
        handler = self.registry.get(env.type)
        if handler is None:
            raise EnvelopeError("unknown_type", env.type)
        if env.sender not in self.members:
            raise EnvelopeError("unknown_sender", env.sender)
        check_envelope(
            env,
            network_id=self.network.network_id,
            chain_id=self.network.chain_id,
            me=self.me,
            clock_skew_s=self.clock_skew_s,
            max_ttl_s=self.max_ttl_s,
            now=now,
            digest=digest,
        )
        return handler.validate(env)

    async def _prepare(self, envs: list[Envelope]) -> None:
        """Let each type's handler read what its checks need, once per batch (a handler
        with a ``prepare`` coroutine: the reputation events re-read the chain's head)."""
        by_type: dict[str, list[Envelope]] = {}
        for env in envs:
            by_type.setdefault(env.type, []).append(env)
        for type_, group in by_type.items():
            prepare = getattr(self.registry.get(type_), "prepare", None)
            if prepare is not None:
                await prepare(group)

    def open_transport(self, raw: Any, type_: str, payload: type[P]) -> tuple[Envelope, P]:
        """A member's transport envelope to this daemon (a push's batch, a pull, a vote
        request), opened: see transport.verify_transport."""
        return verify_transport(
            raw,
            type_,
            payload,
            network=self.network,
            me=self.me,
            scoring=self.scoring,
            clock_skew_s=self.clock_skew_s,
            max_ttl_s=self.max_ttl_s,
        )

    # -- the pipeline ------------------------------------------------------------------
    async def ingest(self, raws: Sequence[Any], via: str | None) -> IngestReport:
        """Check and store envelopes handed over by ``via`` (a peer) or by this daemon
        (None). Penalises ``via`` for what it should not have sent."""
        report = IngestReport()
        now = time.time()
        parsed: list[tuple[Envelope, bytes, bytes]] = []
        batch_ids: set[str] = set()
        for raw in raws:
            claimed = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(claimed, str) and claimed in self._recent:
                # Seen: drop before parsing. A forgery reusing a stored id is dropped
                # too, which costs nothing: the envelope with that id is already here.
                report.duplicates += 1
                continue
            try:
                env, body, digest = self._parse(raw)
            except EnvelopeError as exc:
                report.rejected.append(_verdict(claimed if isinstance(claimed, str) else None, exc))
                continue
            if env.id in self._recent or env.id in batch_ids:
                report.duplicates += 1
                continue
            batch_ids.add(env.id)
            parsed.append((env, body, digest))
        if parsed:
            with self.db.read() as conn:
                known = env_repo.known_ids(conn, (e.id for e, _, _ in parsed))
            if known:
                report.duplicates += sum(1 for e, _, _ in parsed if e.id in known)
                self._remember(list(known))
                parsed = [t for t in parsed if t[0].id not in known]
        await self._prepare([e for e, _, _ in parsed])
        good: list[Checked] = []
        for env, body, digest in parsed:
            try:
                opened = self._check(env, digest, now)
            except SupernodeError as exc:  # the table says reject (penalise) or ignore
                target = report.rejected if exc.verdict == REJECT else report.ignored
                target.append(_verdict(env.id, exc))
                continue
            good.append(Checked(env, body, via, opened))
        if good:
            stored = await self.writer.submit(good)
            fresh = [c for c, new in zip(good, stored, strict=True) if new]
            report.duplicates += len(good) - len(fresh)
            report.accepted = [c.env.id for c in fresh]
            self._remember(report.accepted)
            if fresh:
                for callback in self.on_stored:
                    callback(fresh, via)
        self._count("accepted", len(report.accepted))
        self._count("duplicates", report.duplicates)
        for v in report.rejected:
            self._count(f"rejected:{v['reason']}")
            logger.warning(
                "envelope {} from {} rejected: {} {}",
                v["envelope_id"],
                via or "local",
                v["reason"],
                v["detail"],
            )
        for v in report.ignored:
            self._count(f"ignored:{v['reason']}")
            logger.info(
                "envelope {} from {} ignored: {} {}",
                v["envelope_id"],
                via or "local",
                v["reason"],
                v["detail"],
            )
        if via is not None and via != self.me and report.rejected:
            await self.scoring.penalise(via, report.rejected)
        return report

    async def store_own(self, *envs: Envelope) -> list[Checked]:
        """Store envelopes this daemon just signed, in one write (it skips the signature
        check); returns them checked, in order."""
        checked = []
        for env in envs:
            handler = self.registry.get(env.type)
            if handler is None:
                raise EnvelopeError("unknown_type", env.type)
            checked.append(Checked(env, canonical_json(env.to_wire()), None, handler.validate(env)))
        stored = await self.writer.submit(checked)
        fresh = [c for c, new in zip(checked, stored, strict=True) if new]
        if fresh:
            self._remember([c.env.id for c in fresh])
            self._count("accepted", len(fresh))
            for callback in self.on_stored:
                callback(fresh, None)
        return checked

    def _records(self, groups: list[list[Checked]]) -> set[Record]:
        """What a batch stores: the log, and each type's own rows."""
        types = {c.env.type for g in groups for c in g}
        return {env_repo.SEEN} | {self.registry.get(t).record for t in types}  # type: ignore[union-attr]

    def _apply(self, conn: sqlite3.Connection, groups: list[list[Checked]]) -> list[list[bool]]:
        """One transaction for every queued group: re-check the seen-set (another group
        may have stored the same id meanwhile), append to the log, then type rows."""
        flat = [c for g in groups for c in g]
        known = env_repo.known_ids(conn, (c.env.id for c in flat))
        received_at = time.time()
        new: list[Checked] = []
        taken: set[str] = set()
        for c in flat:
            if c.env.id not in known and c.env.id not in taken:
                taken.add(c.env.id)
                new.append(c)
        env_repo.insert_envelopes(
            conn,
            [
                {
                    "id": c.env.id,
                    "type": c.env.type,
                    "sender": c.env.sender,
                    "recipient": c.env.recipient,
                    "created_at": c.env.created_at,
                    "expires_at": c.env.expires_at,
                    "received_at": received_at,
                    "received_from": c.via,
                    "raw": c.raw,
                }
                for c in new
            ],
        )
        by_type: dict[str, list[Checked]] = {}
        for c in new:
            by_type.setdefault(c.env.type, []).append(c)
        for type_, items in by_type.items():
            handler = self.registry.get(type_)
            assert handler is not None  # checked before queueing
            handler.store(conn, items, received_at)
        # the first occurrence of each new id in each group is "stored"
        out: list[list[bool]] = []
        for g in groups:
            flags = []
            for c in g:
                if c.env.id in taken:
                    flags.append(True)
                    taken.discard(c.env.id)
                else:
                    flags.append(False)
            out.append(flags)
        return out
