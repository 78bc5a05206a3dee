"""The reputation rules: who audits what, and the score. Pure functions of events.

Everything here is integer arithmetic on events taken in a canonical order (by envelope
id), so every member computes the same tallies, tables and hashes from the same events,
whatever order they arrived in. Nothing here reads the clock, the ledger or the network.

- ``audit_rate_bps``: how often an executor's requests are audited (basis points), from
  its history and score as of the last table closed before the epoch began.
- ``assigned``: member ``i`` audits request ``r`` iff keccak(seed_i ‖ r) / 2^256 < rate.
- ``tally``: one closed epoch's events folded into per-member counts (``Tally``).
- ``table``: the score table of an epoch: the decayed sum of the window's tallies.

The formula, with its constants, is written out in docs/reputation.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supernode.crypto.canonical import canonical_json
from supernode.crypto.hashing import keccak

FULL_BPS = 10_000  # 100%
PASS, FAIL, UNAVAILABLE, SKIPPED = "pass", "fail", "unavailable", "skipped"
VERDICTS = (PASS, FAIL, UNAVAILABLE, SKIPPED)


class ReputationRules(BaseModel):
    """The federation's reputation constants (the network file's ``reputation``): every
    member must use the same, or their tables differ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_epochs: int = Field(default=1, ge=1, le=100)  # gossip time after an epoch ends
    window_epochs: int = Field(default=30, ge=1, le=1000)  # epochs a score looks back over
    decay_permille: int = Field(default=900, ge=0, le=1000)  # weight of an epoch one older
    # audit rate by requests served in the window (Gonka's floor), then raised by low score
    full_audit_below: int = Field(default=100, ge=0)
    mid_requests: int = Field(default=5_000, ge=1)
    mid_rate_bps: int = Field(default=500, ge=0, le=FULL_BPS)
    low_requests: int = Field(default=10_000, ge=1)
    low_rate_bps: int = Field(default=100, ge=0, le=FULL_BPS)
    fixed_rate_bps: int | None = Field(default=None, ge=0, le=FULL_BPS)  # benchmarks only
    # points of one epoch
    points_served: int = Field(default=100, ge=0)
    points_failed_audit: int = Field(default=60, ge=0)  # per request failed
    points_unavailable: int = Field(default=20, ge=0)  # per result not served to an auditor
    points_missed_audit: int = Field(default=10, ge=0)  # per assigned audit never done
    points_missed_liveness: int = Field(default=30, ge=0)
    points_no_reveal: int = Field(default=30, ge=0)
    rating_points_max: int = Field(default=5, ge=0)  # users' ratings move an epoch this much
    invalid_after: int = Field(default=5, ge=1)  # failed audited requests in a row


# --- events (decoded; the intake checked their signatures and shapes) -------------------


@dataclass(frozen=True)
class Summary:
    id: str  # envelope id
    executor: str
    request_id: str
    completed: bool


@dataclass(frozen=True)
class Commit:
    id: str
    member: str
    commitment: str  # 0x keccak(seed)


@dataclass(frozen=True)
class Reveal:
    id: str
    member: str
    seed: str  # 0x 32 bytes


@dataclass(frozen=True)
class Verdict:
    id: str
    auditor: str
    executor: str
    request_id: str
    verdict: str


@dataclass(frozen=True)
class Rating:
    id: str
    rater: str
    executor: str
    request_id: str
    rating: int  # 1..5


@dataclass(frozen=True)
class Liveness:
    id: str
    observer: str
    subject: str
    probes: int
    failures: int


@dataclass
class EpochEvents:
    summaries: list[Summary] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    reveals: list[Reveal] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    liveness: list[Liveness] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (
                self.summaries,
                self.commits,
                self.reveals,
                self.verdicts,
                self.ratings,
                self.liveness,
            )
        )


# --- who audits what ---------------------------------------------------------------------


def audit_rate_bps(requests: int, score: int, rules: ReputationRules) -> int:
    """The share of an executor's requests each member audits, in basis points: 100%
    below ``full_audit_below`` requests, falling linearly to ``mid_rate_bps`` at
    ``mid_requests`` and to ``low_rate_bps`` at ``low_requests``; then raised by the
    score's shortfall: rate = floor + (100% - floor) * (100 - score) / 100."""
    if rules.fixed_rate_bps is not None:
        return rules.fixed_rate_bps
    r = rules
    if requests < r.full_audit_below:
        floor = FULL_BPS
    elif requests < r.mid_requests:
        span = max(1, r.mid_requests - r.full_audit_below)
        floor = FULL_BPS - (FULL_BPS - r.mid_rate_bps) * (requests - r.full_audit_below) // span
    elif requests < r.low_requests:
        span = max(1, r.low_requests - r.mid_requests)
        floor = (
            r.mid_rate_bps - (r.mid_rate_bps - r.low_rate_bps) * (requests - r.mid_requests) // span
        )
    else:
        floor = r.low_rate_bps
    score = min(100, max(0, score))
    return floor + (FULL_BPS - floor) * (100 - score) // 100


def _threshold(rate_bps: int) -> int:
    return (rate_bps << 256) // FULL_BPS


def assignment_draw(seed: str, request_id: str) -> int:
    """keccak(seed ‖ request_id) as an integer below 2^256."""
    return int.from_bytes(keccak(bytes.fromhex(seed[2:]) + bytes.fromhex(request_id[2:])), "big")


def assigned(seed: str, request_id: str, rate_bps: int) -> bool:
    """Member with ``seed`` audits ``request_id`` at ``rate_bps``."""
    if rate_bps >= FULL_BPS:
        return True
    if rate_bps <= 0:
        return False
    return assignment_draw(seed, request_id) < _threshold(rate_bps)


def commitment_of(seed: str) -> str:
    return "0x" + keccak(bytes.fromhex(seed[2:])).hex()


# --- one epoch ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one member did in one closed epoch (as executor, auditor and peer)."""

    requests: int = 0  # completed requests it executed
    served: int = 0  # 1: the epoch counts as served
    passed: int = 0  # its audited requests, by outcome
    failed: int = 0
    unavailable: int = 0
    outcomes: str = ""  # P/F per audited request, by request id (for "in a row")
    audits_assigned: int = 0  # as auditor
    audits_done: int = 0
    audits_missed: int = 0
    no_reveal: int = 0  # 1: no valid seed this epoch (its verdicts are void)
    missed_liveness: int = 0
    rating_points: int = 0

    def points(self, rules: ReputationRules) -> int:
        return (
            self.served * rules.points_served
            - self.failed * rules.points_failed_audit
            - self.unavailable * rules.points_unavailable
            - self.audits_missed * rules.points_missed_audit
            - self.missed_liveness * rules.points_missed_liveness
            - self.no_reveal * rules.points_no_reveal
            + self.rating_points
        )


def _first_by_id(items: Iterable[Any], key: Any) -> dict[Any, Any]:
    """Per key, the item with the smallest envelope id (order-independent dedupe)."""
    out: dict[Any, Any] = {}
    for it in items:
        k = key(it)
        cur = out.get(k)
        if cur is None or it.id < cur.id:
            out[k] = it
    return out


def valid_seeds(events: EpochEvents) -> dict[str, str]:
    """Members with exactly one commitment this epoch and a reveal that matches it."""
    commitments: dict[str, set[str]] = defaultdict(set)
    for c in events.commits:
        commitments[c.member].add(c.commitment)
    seeds: dict[str, str] = {}
    for r in sorted(events.reveals, key=lambda r: r.id):
        mine = commitments.get(r.member)
        if mine is not None and len(mine) == 1 and commitment_of(r.seed) in mine:
            seeds.setdefault(r.member, r.seed)
    return seeds


def _outcome(counts: Mapping[str, int]) -> str:
    """A request's outcome from its counted verdicts: the most common; ties go to the
    executor (pass before unavailable before fail)."""
    best = PASS
    for v in (PASS, UNAVAILABLE, FAIL):
        if counts.get(v, 0) > counts.get(best, 0):
            best = v
    return best


def tally(
    events: EpochEvents,
    members: Sequence[str],
    rates: Mapping[str, int],
    rules: ReputationRules,
) -> dict[str, Tally]:
    """Fold one closed epoch's events into a Tally per member. ``rates`` is each
    executor's audit rate for this epoch (``audit_rate_bps``; 100% when missing)."""
    member_set = set(members)
    out = {m: Tally() for m in members}
    seeds = valid_seeds(events)
    for m in members:
        if m not in seeds:
            out[m].no_reveal = 1
    summaries = [
        s
        for s in _first_by_id(
            (s for s in events.summaries if s.completed and s.executor in member_set),
            lambda s: s.request_id,
        ).values()
    ]
    by_request = {s.request_id: s for s in summaries}
    for s in summaries:
        out[s.executor].requests += 1
    # assigned audits: every (auditor with a seed, request of another executor) drawn
    assignments: set[tuple[str, str]] = set()
    thresholds = {x: rates.get(x, FULL_BPS) for x in members}
    for auditor, seed in seeds.items():
        for s in summaries:
            if s.executor != auditor and assigned(seed, s.request_id, thresholds[s.executor]):
                assignments.add((auditor, s.request_id))
                out[auditor].audits_assigned += 1
    # verdicts that count: by an assigned auditor with a valid seed, one per pair
    verdicts = _first_by_id(
        (
            v
            for v in events.verdicts
            if (v.auditor, v.request_id) in assignments
            and v.request_id in by_request
            and by_request[v.request_id].executor == v.executor
        ),
        lambda v: (v.auditor, v.request_id),
    )
    per_request: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    done: set[tuple[str, str]] = set()
    for (auditor, request_id), v in verdicts.items():
        done.add((auditor, request_id))
        if v.verdict != SKIPPED:
            per_request[request_id][v.verdict] += 1
    for auditor, request_id in assignments:
        if (auditor, request_id) in done:
            out[auditor].audits_done += 1
        else:
            out[auditor].audits_missed += 1
    for request_id in sorted(per_request):
        t = out[by_request[request_id].executor]
        o = _outcome(per_request[request_id])
        if o == PASS:
            t.passed += 1
            t.outcomes += "P"
        elif o == FAIL:
            t.failed += 1
            t.outcomes += "F"
        else:
            t.unavailable += 1
    # liveness: missed when more than half of the other members saw most probes fail
    reports = _first_by_id(
        (x for x in events.liveness if x.observer in member_set and x.observer != x.subject),
        lambda x: (x.observer, x.subject),
    )
    saw_down: dict[str, int] = defaultdict(int)
    for (_, subject), x in reports.items():
        if x.probes > 0 and 2 * x.failures > x.probes:
            saw_down[subject] += 1
    for m in members:
        if 2 * saw_down.get(m, 0) > len(members) - 1:
            out[m].missed_liveness = 1
    # users' ratings given this epoch: one per paid request, of its executor (the intake
    # checked the request and who paid), a little
    ratings = _first_by_id(
        (r for r in events.ratings if r.executor in member_set), lambda r: r.request_id
    )
    sums: dict[str, int] = defaultdict(int)
    for r in ratings.values():
        sums[r.executor] += r.rating - 3
    for m, s in sums.items():
        cap = rules.rating_points_max
        out[m].rating_points = max(-cap, min(cap, s))
    for m, t in out.items():
        took_part = t.requests > 0 or m in seeds
        t.served = int(took_part and not t.missed_liveness and t.failed == 0)
    return out


# --- the table -----------------------------------------------------------------------------


def weights(rules: ReputationRules) -> list[int]:
    """Weight of the epoch ``j`` epochs before the table's (integers: 1000, then decayed)."""
    w, out = 1000, []
    for _ in range(rules.window_epochs):
        out.append(w)
        w = w * rules.decay_permille // 1000
    return out


def table(
    epoch: int,
    members: Sequence[str],
    tallies: Mapping[int, Mapping[str, Tally]],
    rules: ReputationRules,
) -> dict[str, Any]:
    """The score table of ``epoch`` from the tallies of the window's epochs (a missing
    epoch counts as nothing done): score = clamp(0..100, Σ w_j·points_j / Σ w_j)."""
    ws = weights(rules)
    total_w = max(1, sum(ws))
    rows = []
    for m in sorted(members):
        acc = 0
        agg = Tally()
        outcomes = ""
        for j, w in enumerate(ws):
            t = tallies.get(epoch - j, {}).get(m)
            if t is None:
                continue
            acc += w * t.points(rules)
            for k in (
                "requests",
                "served",
                "passed",
                "failed",
                "unavailable",
                "audits_assigned",
                "audits_done",
                "audits_missed",
                "no_reveal",
                "missed_liveness",
                "rating_points",
            ):
                setattr(agg, k, getattr(agg, k) + getattr(t, k))
            outcomes = t.outcomes + outcomes  # oldest first
        score = max(0, min(100, acc // total_w))
        audited = agg.passed + agg.failed
        rows.append(
            {
                "address": m,
                "score": score,
                "invalid": "F" * rules.invalid_after in outcomes,
                "requests": agg.requests,
                "epochs_served": agg.served,
                "audits_passed": agg.passed,
                "audits_failed": agg.failed,
                "results_unavailable": agg.unavailable,
                "pass_rate_bps": agg.passed * FULL_BPS // audited if audited else None,
                "audits_assigned": agg.audits_assigned,
                "audits_done": agg.audits_done,
                "audits_missed": agg.audits_missed,
                "epochs_without_reveal": agg.no_reveal,
                "epochs_missed_liveness": agg.missed_liveness,
                "rating_points": agg.rating_points,
            }
        )
    return {"epoch": epoch, "rows": rows}


def table_hash(tbl: Mapping[str, Any]) -> str:
    return "0x" + keccak(canonical_json(dict(tbl))).hex()


def rates_from(
    tbl: Mapping[str, Any] | None, members: Sequence[str], rules: ReputationRules
) -> dict[str, int]:
    """Each executor's audit rate for an epoch, from the last table closed before it."""
    rows = {r["address"]: r for r in (tbl or {}).get("rows", [])}
    return {
        m: audit_rate_bps(rows[m]["requests"], rows[m]["score"], rules)
        if m in rows
        else audit_rate_bps(0, 0, rules)
        for m in members
    }


def tally_to_dict(t: Tally) -> dict[str, Any]:
    return asdict(t)


def tally_from_dict(d: Mapping[str, Any]) -> Tally:
    return Tally(**d)
