"""Reputation events: their gossip types, typed payloads, checks and storage.

Every event names its epoch. The intake refuses, with a reason (and a penalty for the
peer that handed it over), what it can already tell is wrong: an epoch too far ahead or
closed, a sender not entitled, a reveal that does not match its commitment, a verdict by
a member its revealed seed did not assign, a rating by someone who did not pay. Its
checks read a cache of the chain's epoch boundaries, which may lag; so the score
(rules.tally, fed by book.py) applies the timing rules again on the boundaries
themselves, and what counts never depends on when or where an event arrived.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import (
    ChecksumAddress,
    Envelope,
    EnvelopeError,
    Hex32,
    Payload,
    check_envelope,
    parse_envelope,
    payload_of,
)
from supernode.errors import BadRequest
from supernode.federation.handlers import Checked
from supernode.federation.network import NetworkFile
from supernode.inference.results import summary_in
from supernode.ledger import MAX_INTEGER
from supernode.ledger import reputation as repo
from supernode.ledger.db import Ledger
from supernode.reputation import rules
from supernode.reputation.clock import EpochClock

SEED_COMMIT = "audit_seed_commit"
SEED_REVEAL = "audit_seed_reveal"
VERDICT = "audit_verdict"
RATING = "user_rating"  # a member carries a user's signed rating
USER_RATING = "request_rating"  # what the user signs
LIVENESS = "liveness"
TYPES = (SEED_COMMIT, SEED_REVEAL, VERDICT, RATING, LIVENESS)
REREAD_S = 0.2  # the least time between two reads of the head that events ask for
EPOCHS_AHEAD = 2  # how far past the head epoch an event may name (commits are one ahead)
RATING_EPOCHS = 30  # a request may be rated up to this many epochs after the one it ran in

Epoch = Annotated[int, Field(ge=0, le=MAX_INTEGER)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]


class SeedCommitPayload(Payload):
    epoch: Epoch
    commitment: Hex32  # keccak(seed)


class SeedRevealPayload(Payload):
    epoch: Epoch
    seed: Hex32


class VerdictPayload(Payload):
    epoch: Epoch
    request_id: Hex32
    executor: ChecksumAddress
    verdict: Literal["pass", "fail", "unavailable", "skipped"]
    position: Annotated[int, Field(ge=0, le=MAX_INTEGER)] | None = None  # first failing token
    detail: Annotated[str, StringConstraints(max_length=500)] = ""
    # the executor's signed result summary of the request: the verdict's evidence that the
    # request ran, checked by every member whatever order the two reach it in
    summary: dict[str, Any]


class UserRatingPayload(Payload):
    """What the user signs (`request_rating`)."""

    request_id: Hex32
    rating: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, StringConstraints(max_length=280)] = ""


class RatingPayload(Payload):
    """`user_rating`: a member carries the user's signed rating into the epoch it is given
    in, naming the request's executor."""

    epoch: Epoch
    executor: ChecksumAddress
    rating: dict[str, Any]  # the user's signed `request_rating` envelope


class Observation(Payload):
    subject: ChecksumAddress
    probes: Count
    failures: Count


class LivenessPayload(Payload):
    epoch: Epoch
    observations: Annotated[list[Observation], Field(max_length=1024)]


def open_summary(raw: Any, network: NetworkFile) -> Envelope:
    """An executor's signed result summaries carried as evidence (whatever its age)."""
    from supernode.inference.results import RESULT_SUMMARIES

    if not isinstance(raw, dict):
        raise EnvelopeError("unknown_request", "summary: the executor's signed result summary")
    try:
        env = parse_envelope(raw, "summary")
    except BadRequest as exc:
        raise EnvelopeError("unknown_request", exc.detail) from exc
    if env.type != RESULT_SUMMARIES:
        raise EnvelopeError("unknown_request", f"summary: type {env.type}")
    try:
        check_envelope(
            env,
            network_id=network.network_id,
            chain_id=network.chain_id,
            me=None,
            clock_skew_s=0,
            max_ttl_s=10**9,
            now=env.created_at,
        )
    except EnvelopeError as exc:
        raise EnvelopeError("unknown_request", f"the summary: {exc}") from exc
    return env


def open_user_rating(raw: Any, network: NetworkFile) -> tuple[Envelope, UserRatingPayload]:
    """The user's signed rating: shape, id and signature (whatever its age: a carried
    rating is checked again by every member, long after it was signed)."""
    if not isinstance(raw, dict):
        raise EnvelopeError("bad_payload", "rating: a signed request_rating envelope")
    try:
        env = parse_envelope(raw, "rating")
    except BadRequest as exc:
        raise EnvelopeError("bad_payload", exc.detail) from exc
    if env.type != USER_RATING:
        raise EnvelopeError("bad_payload", f"rating: type {env.type}, not {USER_RATING}")
    check_envelope(
        env,
        network_id=network.network_id,
        chain_id=network.chain_id,
        me=None,
        clock_skew_s=0,
        max_ttl_s=10**9,
        now=env.created_at,
    )
    return env, payload_of(env, UserRatingPayload)


class ReputationHandler:
    """One handler for every reputation type: they share the epoch checks and the table."""

    record = repo.EVENTS

    def __init__(
        self,
        type_: str,
        *,
        db: Ledger,
        clock: EpochClock,
        network: NetworkFile,
        rate_for: Callable[[str, int], int | None],
    ) -> None:
        assert type_ in TYPES
        self.type = type_
        self.db = db
        self.clock = clock
        self.network = network
        self.members = {m.address for m in network.members}
        self.rate_for = rate_for  # an executor's audit rate in an epoch, once known

    # -- checks ----------------------------------------------------------------------
    async def prepare(self, envs: Sequence[Envelope]) -> None:
        """Before a batch's checks: when an event names an epoch past our cached head and
        was signed after our last read of it, read the head again (blocks come in bursts,
        and our cache is as old as the last audit tick). At most one read per batch and
        per REREAD_S, so a peer cannot make us read the chain per envelope."""
        head = self.clock.epoch
        if head is None:
            return
        read_at = self.clock.read_at or 0.0
        if time.time() - read_at < REREAD_S:
            return
        for env in envs:
            epoch = env.payload.get("epoch") if isinstance(env.payload, dict) else None
            if isinstance(epoch, int) and epoch > head + EPOCHS_AHEAD and env.created_at > read_at:
                await self.clock.refresh(back=0)
                return

    def validate(self, env: Envelope) -> tuple[dict[str, Any], Any]:
        model = {
            SEED_COMMIT: SeedCommitPayload,
            SEED_REVEAL: SeedRevealPayload,
            VERDICT: VerdictPayload,
            RATING: RatingPayload,
            LIVENESS: LivenessPayload,
        }[self.type]
        p = payload_of(env, model)
        self._epoch(env, p.epoch)
        row = getattr(self, "_" + self.type)(env, p)
        return row, p

    def _epoch(self, env: Envelope, epoch: int) -> None:
        head = self.clock.epoch
        if head is not None and epoch > head + EPOCHS_AHEAD:
            # Judged only on a head read after the event was signed (prepare() reads one):
            # then the sender named an epoch the chain had not come near. Otherwise the
            # stale view may be ours, and the sender is not penalised.
            read_at = self.clock.read_at
            fair = read_at is not None and read_at >= env.created_at
            raise EnvelopeError(
                "epoch_ahead", f"epoch {epoch}; the chain is at epoch {head}", penalise=fair
            )
        closed = self.clock.close_time(epoch)
        if closed is not None and env.created_at > closed:
            raise EnvelopeError(
                "epoch_closed", f"epoch {epoch} closed at {closed}; signed at {env.created_at:.0f}"
            )

    def _row(self, env: Envelope, epoch: int, **cols: Any) -> dict[str, Any]:
        return {
            "envelope_id": env.id,
            "kind": self.type,
            "epoch": epoch,
            "sender": env.sender,
            "subject": cols.get("subject"),
            "request_id": cols.get("request_id"),
            "value": cols.get("value"),
            "data": canonical_json(env.payload),
            "created_at": env.created_at,
        }

    def _audit_seed_commit(self, env: Envelope, p: SeedCommitPayload) -> dict[str, Any]:
        start = self.clock.start(p.epoch)
        if start is not None and env.created_at > start:
            raise EnvelopeError(
                "late_commit", f"epoch {p.epoch} began at {start}; a seed is committed before"
            )
        return self._row(env, p.epoch, value=p.commitment)

    def _audit_seed_reveal(self, env: Envelope, p: SeedRevealPayload) -> dict[str, Any]:
        head = self.clock.epoch
        end = self.clock.start(p.epoch + 1)
        if (head is not None and p.epoch >= head + 1) or (
            end is not None and env.created_at < end
        ):  # (a reveal for the head epoch may be this cache lagging: the tally decides)
            raise EnvelopeError("early_reveal", f"epoch {p.epoch} has not ended")
        with self.db.read() as conn:
            committed = repo.commitments(conn, env.sender, p.epoch)
        # no commitment here yet: it may travel in the same batch (a catch-up); the tally
        # counts a reveal only against its commitment, so storing it is safe
        if committed and rules.commitment_of(p.seed) not in committed:
            raise EnvelopeError("reveal_mismatch", "keccak(seed) is not the commitment")
        return self._row(env, p.epoch, value=p.seed)

    def _same_epoch(self, t: float, named: int) -> None:
        """The request signed at ``t`` ran in epoch ``named``, or this cache cannot tell yet
        (it may lag the sender's by a block: the next boundary not read yet)."""
        ran = self.clock.epoch_at(t)
        if ran is None or ran == named:
            return
        if ran < named and self.clock.start(ran + 1) is None:
            return  # perhaps the next epoch, whose start is not read here yet
        raise EnvelopeError("wrong_epoch", f"the request ran in epoch {ran}")

    def _audit_verdict(self, env: Envelope, p: VerdictPayload) -> dict[str, Any]:
        if p.executor == env.sender:
            raise EnvelopeError("self_audit", "a member never audits itself")
        summary = open_summary(p.summary, self.network)
        item = summary_in(summary, p.request_id)
        if summary.sender != p.executor or item is None:
            raise EnvelopeError(
                "unknown_request", "the summary is not that request's by that executor"
            )
        if item.get("status") != "completed":
            raise EnvelopeError("unknown_request", "that request did not complete")
        self._same_epoch(summary.created_at, p.epoch)
        with self.db.read() as conn:
            seed = repo.revealed_seed(conn, env.sender, p.epoch)
        rate = self.rate_for(p.executor, p.epoch)
        if seed is not None and rate is not None and not rules.assigned(seed, p.request_id, rate):
            raise EnvelopeError("not_assigned", f"{env.sender}'s seed did not draw this request")
        return self._row(env, p.epoch, subject=p.executor, request_id=p.request_id, value=p.verdict)

    def _user_rating(self, env: Envelope, p: RatingPayload) -> dict[str, Any]:
        """The request's summary and spend may not be here yet (they can travel in the same
        batch during a catch-up): what is here is checked now, and the table counts a
        rating only once both show the request ran and the rater paid (book.py)."""
        inner, r = open_user_rating(p.rating, self.network)
        with self.db.read() as conn:
            ran = repo.summary_of(conn, r.request_id)
            paid = repo.spend_payer(conn, r.request_id)
        if ran is not None:
            if ran["executor"] != p.executor or ran["status"] != "completed":
                raise EnvelopeError(
                    "unknown_request", f"no completed request {r.request_id} by {p.executor}"
                )
            when = self.clock.epoch_at(ran["created_at"])
            if when is not None and not p.epoch - RATING_EPOCHS <= when <= p.epoch:
                raise EnvelopeError(
                    "wrong_epoch", f"the request ran in epoch {when}; rated in epoch {p.epoch}"
                )
        if paid is not None and paid["owner"] != inner.sender:
            raise EnvelopeError("not_payer", f"{inner.sender} did not pay for that request")
        return self._row(env, p.epoch, subject=p.executor, request_id=r.request_id, value=inner.id)

    def _liveness(self, env: Envelope, p: LivenessPayload) -> dict[str, Any]:
        for o in p.observations:
            if o.subject not in self.members:
                raise EnvelopeError("bad_payload", f"{o.subject} is not a member")
            if o.failures > o.probes:
                raise EnvelopeError("bad_payload", "more failures than probes")
        return self._row(env, p.epoch)

    # -- storage ------------------------------------------------------------------------
    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        repo.add_events(conn, [c.parsed[0] for c in items])


def decode(rows: Sequence[dict[str, Any]]) -> rules.EpochEvents:
    """Stored event rows as the rules' event values."""
    import json

    out = rules.EpochEvents()
    for r in rows:
        kind = r["kind"]
        if kind == SEED_COMMIT:
            out.commits.append(rules.Commit(r["envelope_id"], r["sender"], r["value"]))
        elif kind == SEED_REVEAL:
            out.reveals.append(rules.Reveal(r["envelope_id"], r["sender"], r["value"]))
        elif kind == VERDICT:
            out.verdicts.append(
                rules.Verdict(
                    r["envelope_id"], r["sender"], r["subject"], r["request_id"], r["value"]
                )
            )
        elif kind == RATING:
            data = json.loads(r["data"])
            inner = data["rating"]
            out.ratings.append(
                rules.Rating(
                    inner["id"],
                    inner["sender"],
                    r["subject"],
                    r["request_id"],
                    int(inner["payload"]["rating"]),
                )
            )
        elif kind == LIVENESS:
            data = json.loads(r["data"])
            for o in data["observations"]:
                out.liveness.append(
                    rules.Liveness(
                        r["envelope_id"], r["sender"], o["subject"], o["probes"], o["failures"]
                    )
                )
    return out
