"""Peer-to-peer wire: transport envelopes that wrap gossip, and their bodies.

A push is `POST /p2p/envelopes` with `{"batch": <gossip_batch envelope>, "envelopes": [...]}`:
the batch envelope, signed by the peer handing the envelopes over and bound to the
receiving peer, names their ids, so the receiver knows whom to penalise for a bad one even
when the envelope inside claims another sender. A pull is `POST /p2p/sync` with a
`sync_request` envelope `{after, limit}` bound to the serving peer. Neither transport
envelope is stored: replaying one within its short life changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity

GOSSIP_BATCH = "gossip_batch"
SYNC_REQUEST = "sync_request"
TRANSPORT_TTL_S = 120


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


def sync_request(
    identity: Identity, network_id: str, chain_id: int, recipient: str, after: int, limit: int
) -> Envelope:
    return sign_envelope(
        identity,
        type_=SYNC_REQUEST,
        network_id=network_id,
        chain_id=chain_id,
        payload={"after": after, "limit": limit},
        recipient=recipient,
        ttl_s=TRANSPORT_TTL_S,
    )


def sync_body(raws: Sequence[bytes], next_cursor: int, more: bool) -> bytes:
    return (
        b'{"envelopes":['
        + b",".join(raws)
        + b'],"next_cursor":'
        + str(next_cursor).encode()
        + b',"more":'
        + (b"true" if more else b"false")
        + b"}"
    )
