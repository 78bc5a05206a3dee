"""Signing as this supernode: its key, its network, its envelopes' lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supernode.crypto.attest import attest
from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity
from supernode.federation.network import NetworkFile


@dataclass(frozen=True)
class Signer:
    identity: Identity
    network: NetworkFile
    ttl_s: int  # lifetime of what it signs unless a call says otherwise

    def sign(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        recipient: str | None = None,
        ttl_s: int | None = None,
    ) -> Envelope:
        return sign_envelope(
            self.identity,
            type_=type_,
            network_id=self.network.network_id,
            chain_id=self.network.chain_id,
            payload=payload,
            recipient=recipient,
            ttl_s=self.ttl_s if ttl_s is None else ttl_s,
        )

    def attest(self, kind: str, terms: dict[str, Any]) -> dict[str, str]:
        """This supernode's attestation of ``terms`` as ``kind``: {"signer", "signature"}."""
        return attest(
            self.identity,
            kind,
            terms,
            chain_id=self.network.chain_id,
            network_id=self.network.network_id,
        )
