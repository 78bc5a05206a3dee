"""`/update_inference_sn_reputation_score`: a signed event from outside the gossip.

Two kinds are taken: a user's rating of a request it paid for (``request_rating``, signed
by the pack's owner; this member carries it to the federation as a ``user_rating``
event), and a member's audit verdict (``audit_verdict``, checked by the intake like any
envelope). Anything else, or an event that fails a check, is refused with the reason.
"""

from __future__ import annotations

import time
from typing import Any

from supernode.crypto.envelope import EnvelopeError, check_envelope, parse_envelope
from supernode.errors import BadRequest, Conflict, Forbidden, NotFound, Refused, Unavailable
from supernode.federation.intake import Intake
from supernode.federation.network import NetworkFile
from supernode.federation.signer import Signer
from supernode.ledger import reputation as repo
from supernode.ledger.db import Ledger
from supernode.reputation.clock import EpochClock
from supernode.reputation.events import RATING, USER_RATING, VERDICT, open_user_rating


async def submit_event(
    raw: Any,
    *,
    network: NetworkFile,
    signer: Signer,
    intake: Intake,
    publish: Any,
    db: Ledger,
    clock: EpochClock,
    clock_skew_s: int,
    max_ttl_s: int,
) -> dict[str, Any]:
    env = parse_envelope(raw, "event")
    if env.type == VERDICT:
        report = await intake.ingest([raw], via=None)
        if report.accepted:
            return {"accepted": True, "kind": VERDICT, "event_id": env.id}
        if report.duplicates:
            raise Conflict("this verdict is stored already", reason="duplicate")
        why = (report.rejected or report.ignored)[0]
        raise Refused(f"verdict refused: {why['detail']}", reason=why["reason"])
    if env.type != USER_RATING:
        raise BadRequest(
            f"an event is a user's signed {USER_RATING} or a member's signed {VERDICT}",
            reason="unknown_event_type",
        )
    inner, r = open_user_rating(raw, network)
    try:  # a new rating is fresh: its signed time window holds now
        check_envelope(
            inner,
            network_id=network.network_id,
            chain_id=network.chain_id,
            me=None,
            clock_skew_s=clock_skew_s,
            max_ttl_s=max_ttl_s,
            now=time.time(),
        )
    except EnvelopeError as exc:
        raise Refused(f"rating refused: {exc.detail}", reason=exc.reason) from exc
    with db.read() as conn:
        summary = repo.summary_of(conn, r.request_id)
        paid = repo.spend_payer(conn, r.request_id)
        rated = conn.execute(
            "SELECT 1 FROM reputation_events WHERE kind = ? AND request_id = ? LIMIT 1",
            (RATING, r.request_id),
        ).fetchone()
    if summary is None or summary["status"] != "completed" or paid is None:
        raise NotFound(
            f"no completed, paid request {r.request_id} is known here", reason="unknown_request"
        )
    if paid["owner"] != inner.sender:
        raise Forbidden(
            f"{inner.sender} did not pay for request {r.request_id}", reason="not_payer"
        )
    if rated is not None:
        raise Conflict(
            "this request is rated already (one rating per paid request)", reason="duplicate"
        )
    epoch = clock.epoch  # a rating counts in the epoch it is given in
    if epoch is None:
        raise Unavailable("the chain's epoch is not known here yet; try again in a moment")
    event = signer.sign(RATING, {"epoch": epoch, "executor": summary["executor"], "rating": raw})
    try:
        await publish([event])
    except EnvelopeError as exc:
        raise Refused(f"rating refused: {exc.detail}", reason=exc.reason) from exc
    return {"accepted": True, "kind": RATING, "event_id": event.id, "epoch": epoch}
