"""Attestations: a member's signature that it agrees with a subject (a quote, a pack,
a spend order). A quorum of them is a certificate.

EIP-712 typed data `Attestation(string kind, bytes32 subject)` under the envelope domain
(so it is bound to the chain and the network). The subject is the keccak of the canonical
JSON of the terms. libsecp256k1 signs deterministically (RFC 6979): a member asked twice
about the same subject returns the same signature.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from supernode.crypto.canonical import canonical_json
from supernode.crypto.eip712 import domain_separator
from supernode.crypto.envelope import EnvelopeError, recover_signer, remember_signer
from supernode.crypto.hashing import keccak
from supernode.crypto.keys import Identity
from supernode.errors import CertificateError

ATTESTATION_TYPEHASH = keccak(b"Attestation(string kind,bytes32 subject)")


def subject_hash(terms: dict[str, Any]) -> bytes:
    return keccak(canonical_json(terms))


def attestation_digest(kind: str, subject: bytes, *, chain_id: int, network_id: str) -> bytes:
    struct = keccak(ATTESTATION_TYPEHASH + keccak(kind.encode()) + subject)
    return keccak(b"\x19\x01" + domain_separator(chain_id, network_id) + struct)


def attest(
    identity: Identity, kind: str, terms: dict[str, Any], *, chain_id: int, network_id: str
) -> dict[str, str]:
    """Sign ``terms`` as ``kind``: returns {"signer", "signature"}."""
    digest = attestation_digest(kind, subject_hash(terms), chain_id=chain_id, network_id=network_id)
    signature = "0x" + identity.sign_digest(digest).hex()
    remember_signer(digest, signature, identity.address)  # it comes back in certificates
    return {"signer": identity.address, "signature": signature}


def verify_certificate(
    kind: str,
    terms: dict[str, Any],
    signatures: Iterable[Any],
    *,
    chain_id: int,
    network_id: str,
    eligible: Collection[str],
    quorum: int | None,
) -> list[str]:
    """Check that ``signatures`` hold a quorum of distinct eligible members' attestations
    of ``terms``; returns the signers. Raises CertificateError with the reason."""
    if quorum is None:
        raise CertificateError("no_quorum", "no eligible members known yet")
    digest = attestation_digest(kind, subject_hash(terms), chain_id=chain_id, network_id=network_id)
    signers: list[str] = []
    for item in signatures:
        if not isinstance(item, dict) or set(item) != {"signer", "signature"}:
            raise CertificateError("malformed_signature", "expected {signer, signature}")
        signer, sig = item["signer"], item["signature"]
        if not isinstance(signer, str) or not isinstance(sig, str):
            raise CertificateError("malformed_signature", "signer and signature are strings")
        try:
            recovered = recover_signer(digest, sig)
        except EnvelopeError as exc:
            raise CertificateError("bad_signature", f"{signer}: {exc}") from exc
        if recovered != signer:
            raise CertificateError("bad_signature", f"{signer}: signed by someone else")
        if signer not in eligible:
            raise CertificateError("not_eligible", f"{signer} is not an eligible member")
        if signer in signers:
            raise CertificateError("duplicate_signer", signer)
        signers.append(signer)
    if len(signers) < quorum:
        raise CertificateError("too_few_signatures", f"{len(signers)} of {quorum} needed")
    return signers


def is_attestation(
    kind: str,
    terms: dict[str, Any],
    item: Any,
    *,
    chain_id: int,
    network_id: str,
    eligible: Collection[str],
) -> bool:
    """Whether ``item`` is one eligible member's valid attestation of ``terms`` (a peer's
    answer to "sign this", checked before it joins a certificate)."""
    try:
        verify_certificate(
            kind,
            terms,
            [item],
            chain_id=chain_id,
            network_id=network_id,
            eligible=eligible,
            quorum=1,
        )
    except (ValueError, TypeError):
        return False
    return True
