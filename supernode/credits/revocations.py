"""Revoking an API key (a spend delegation).

The pack's owner signs a `delegation_revocation` {pack_id, delegation_id} and hands it to
any supernode (``POST /revoke_delegation``). That supernode checks it (a signature of the
pack's buyer, the pack known), wraps it in its own `delegation_revoked` envelope
{revocation} and gossips it; every member checks the owner's signature again and stores
the revocation. From then on a member refuses to vote for an order under that
delegation (``delegation_revoked``), and the delegate refuses the key (401): a revoked
key is refused everywhere as soon as the gossip reaches each member (one push, or the
next anti-entropy round)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from supernode.credits.orders import NO_TIME_WINDOW
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import (
    Envelope,
    EnvelopeError,
    Hex32,
    Payload,
    open_envelope,
    payload_of,
)
from supernode.errors import Refused
from supernode.federation.handlers import Checked
from supernode.federation.network import NetworkFile
from supernode.ledger import spends as repo

REVOCATION = "delegation_revocation"  # the owner's, handed to a supernode
REVOKED = "delegation_revoked"  # a member's, carrying it through the federation


class RevocationPayload(Payload):
    pack_id: Hex32
    delegation_id: Hex32


class RevokedPayload(Payload):
    revocation: dict[str, Any]


def open_revocation(
    raw: Any,
    network: NetworkFile,
    conn: sqlite3.Connection,
    *,
    clock_skew_s: int = NO_TIME_WINDOW,
    max_ttl_s: int = NO_TIME_WINDOW,
) -> tuple[Envelope, RevocationPayload]:
    """The owner's revocation, checked: its signature and binding (its time window when
    the caller passes one: a fresh one at the edge, any age once a member stored it),
    the pack known here, and signed by the pack's buyer."""
    env, p = open_envelope(
        raw,
        REVOCATION,
        RevocationPayload,
        network_id=network.network_id,
        chain_id=network.chain_id,
        me=None,
        clock_skew_s=clock_skew_s,
        max_ttl_s=max_ttl_s,
    )
    pack = repo.pack_state(conn, p.pack_id)
    if pack is None:
        raise EnvelopeError("unknown_pack", f"no certified pack {p.pack_id} known here")
    if env.sender != pack["buyer"]:
        raise Refused(f"{env.sender} is not the owner of pack {p.pack_id}", reason="not_owner")
    return env, p


class RevokedHandler:
    """Gossip type `delegation_revoked`: a member carrying an owner's revocation."""

    type = REVOKED
    record = repo.CERTIFICATES  # as durable as a certificate: it stops spends

    def __init__(self, db: Any, network: NetworkFile) -> None:
        self.db = db
        self.network = network

    def validate(self, env: Envelope) -> tuple[Envelope, RevocationPayload]:
        p = payload_of(env, RevokedPayload)
        with self.db.read() as conn:
            try:
                return open_revocation(p.revocation, self.network, conn)
            except EnvelopeError as exc:
                if exc.reason == "unknown_pack":  # its pack may not have reached us yet
                    raise EnvelopeError(exc.reason or "", exc.detail, penalise=False) from exc
                raise

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        for c in items:
            inner, p = c.parsed
            repo.add_revocation(
                conn,
                delegation_id=p.delegation_id,
                pack_id=p.pack_id,
                owner=inner.sender,
                revoked_at=inner.created_at,
                envelope_id=c.env.id,
                revocation=canonical_json(inner.to_wire()),
                received_at=received_at,
            )
