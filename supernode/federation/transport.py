"""Peer-to-peer wire: transport envelopes that wrap gossip, and their bodies.

A push is `POST /p2p/envelopes` with `{"batch": <gossip_batch envelope>, "envelopes": [...]}`:
the batch envelope, signed by the peer handing the envelopes over and bound to the
receiving peer, names their ids, so the receiver knows whom to penalise for a bad one even
when the envelope inside claims another sender. A pull is two steps: `POST /p2p/sync` with
a `sync_request` envelope `{after, limit}` bound to the serving peer lists the ids after
the cursor, then `POST /p2p/fetch` with an `envelope_fetch` envelope `{ids}` brings the
ones the puller does not hold (usually none: push delivered them). No transport envelope
is stored: replaying one within its short life changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field

from supernode.crypto.envelope import (
    Envelope,
    EnvelopeError,
    Hex32,
    Payload,
    open_envelope,
    sign_envelope,
)
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Forbidden, Unauthorized
from supernode.federation.network import NetworkFile
from supernode.federation.scoring import PeerScoring
from supernode.ledger import MAX_INTEGER

GOSSIP_BATCH = "gossip_batch"
SYNC_REQUEST = "sync_request"
ENVELOPE_FETCH = "envelope_fetch"
TRANSPORT_TTL_S = 120
P = TypeVar("P", bound=BaseModel)


def batch_body(
    identity: Identity,
    network_id: str,
    chain_id: int,
    recipient: str,
    ids: Sequence[str],
    raws: Sequence[bytes],
) -> bytes:
    """The JSON body of a push; envelope bytes are spliced in as stored (no re-encoding)."""
    batch = sign_envelope(
        identity,
        type_=GOSSIP_BATCH,
        network_id=network_id,
        chain_id=chain_id,
        payload={"ids": list(ids)},
        recipient=recipient,
        ttl_s=TRANSPORT_TTL_S,
    )
    return (
        b'{"batch":'
        + batch.model_dump_json().encode()
        + b',"envelopes":['
        + b",".join(raws)
        + b"]}"
    )


def fetch_body(raws: Sequence[bytes]) -> bytes:
    """The answer to a fetch; envelope bytes are spliced in as stored."""
    return b'{"envelopes":[' + b",".join(raws) + b"]}"


class GossipBatchPayload(Payload):
    """`gossip_batch`: the ids of the envelopes a push carries, in order."""

    ids: list[Hex32]


class SyncRequestPayload(Payload):
    """`sync_request`: the ids after the caller's cursor in our log, at most ``limit``."""

    after: Annotated[int, Field(ge=0, le=MAX_INTEGER)]
    limit: Annotated[int, Field(ge=1, le=MAX_INTEGER)]


class EnvelopeFetchPayload(Payload):
    """`envelope_fetch`: the envelopes with these ids that the caller may see."""

    ids: Annotated[list[Hex32], Field(min_length=1)]


def verify_transport(
    raw: Any,
    type_: str,
    payload: type[P],
    *,
    network: NetworkFile,
    me: str,
    scoring: PeerScoring,
    clock_skew_s: int,
    max_ttl_s: int,
) -> tuple[Envelope, P]:
    """Open a transport envelope: a member's, not banned, bound to us, fresh, signed, its
    payload typed. Raises BadRequest / Forbidden / Unauthorized with the reason."""

    def admitted(env: Envelope) -> None:  # cheap, before the signature
        if network.member(env.sender) is None:
            raise Forbidden(f"{env.sender} is not a member of this network")
        until = scoring.banned_until(env.sender)
        if until is not None:
            raise Forbidden(f"{env.sender} is banned until {until:.0f}")
        if env.recipient != me:
            raise BadRequest(f"{type_} must be addressed to {me}")

    try:
        return open_envelope(
            raw,
            type_,
            payload,
            network_id=network.network_id,
            chain_id=network.chain_id,
            me=me,
            clock_skew_s=clock_skew_s,
            max_ttl_s=max_ttl_s,
            precheck=admitted,
        )
    except EnvelopeError as exc:  # a transport envelope authenticates its peer
        raise Unauthorized(f"{type_} refused: {exc}") from exc


def sign_transport(
    identity: Identity,
    network: NetworkFile,
    type_: str,
    recipient: str,
    payload: dict[str, Any],
) -> bytes:
    """A request to one peer, as a short-lived transport envelope bound to it (JSON)."""
    return (
        sign_envelope(
            identity,
            type_=type_,
            network_id=network.network_id,
            chain_id=network.chain_id,
            payload=payload,
            recipient=recipient,
            ttl_s=TRANSPORT_TTL_S,
        )
        .model_dump_json()
        .encode()
    )
