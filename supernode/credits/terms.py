"""Wire terms of a credit-pack purchase and their checks (pure: no I/O).

- buyer's request: an envelope `credit_purchase_request` {credits, nonce?}, signed by
  the buyer, for no particular supernode (recipient null). purchase_id = keccak(request
  id), so the same request always means the same purchase (a retry); a fresh nonce makes
  a second purchase of the same size.
- quote terms, agreed (attested) by a quorum of eligible members: the signed quote is
  {"terms", "agreements"}.
- pack terms, attested by a quorum once each member checked the payment on chain: the
  credit-pack certificate is {"terms", "signatures"}. pack_id = purchase_id.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from supernode.crypto.attest import CertificateError, verify_certificate
from supernode.crypto.envelope import Envelope, Payload, open_envelope
from supernode.crypto.hashing import keccak
from supernode.errors import BadRequest, Refused
from supernode.federation.network import NetworkFile
from supernode.ledger import MAX_INTEGER

PURCHASE_REQUEST = "credit_purchase_request"
QUOTE_KIND = "credit_pack_quote"
PACK_KIND = "credit_pack"
TX_HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
QUOTE_FIELDS = {
    "purchase_id",
    "request_id",
    "buyer",
    "credits",
    "credit_price_wei",
    "amount_wei",
    "payment_address",
    "expiry_block",
    "quoted_by",
    "network_id",
    "chain_id",
}
PACK_FIELDS = {
    "pack_id",
    "purchase_id",
    "buyer",
    "credits",
    "amount_wei",
    "tx_hash",
    "block_number",
    "network_id",
    "chain_id",
}


def purchase_id_for(request_id: str) -> str:
    return "0x" + keccak(bytes.fromhex(request_id[2:])).hex()


def check_tx_hash(tx_hash: Any) -> str:
    if not isinstance(tx_hash, str) or not TX_HASH_RE.match(tx_hash):
        raise BadRequest("tx_hash must be 0x followed by 64 hex digits")
    return tx_hash.lower()


class PurchaseRequestPayload(Payload):
    """`credit_purchase_request`: the buyer asks for ``credits``; a fresh ``nonce`` makes
    a new purchase of the same size (the same request is the same purchase)."""

    credits: Annotated[int, Field(le=MAX_INTEGER)]  # 1..max_credits_per_pack: bad_credits
    nonce: Annotated[str, StringConstraints(max_length=66)] = ""


def check_request(
    raw: Any, network: NetworkFile, *, clock_skew_s: int, max_ttl_s: int, max_credits: int
) -> Envelope:
    """The buyer's signed request for a pack. Raises BadRequest/Refused with the reason."""
    env, p = open_envelope(
        raw,
        PURCHASE_REQUEST,
        PurchaseRequestPayload,
        network_id=network.network_id,
        chain_id=network.chain_id,
        me=None,
        clock_skew_s=clock_skew_s,
        max_ttl_s=max_ttl_s,
    )
    if not 1 <= p.credits <= max_credits:
        raise Refused(f"credits must be 1..{max_credits}", reason="bad_credits")
    return env


def quote_terms(
    request: Envelope, network: NetworkFile, *, expiry_block: int, quoted_by: str
) -> dict[str, Any]:
    credits = request.payload["credits"]
    return {
        "purchase_id": purchase_id_for(request.id),
        "request_id": request.id,
        "buyer": request.sender,
        "credits": credits,
        "credit_price_wei": network.credit_price_wei,
        "amount_wei": credits * network.credit_price_wei,
        "payment_address": network.payment_address,
        "expiry_block": expiry_block,
        "quoted_by": quoted_by,
        "network_id": network.network_id,
        "chain_id": network.chain_id,
    }


def check_quote_terms(
    terms: Any,
    request: Envelope,
    network: NetworkFile,
    *,
    latest_block: int,
    ttl_blocks: int,
    quoted_by: str,
) -> None:
    """A peer recomputes the quote from the request and its own network file."""
    if not isinstance(terms, dict) or set(terms) != QUOTE_FIELDS:
        raise BadRequest(f"quote terms must have exactly {sorted(QUOTE_FIELDS)}")
    expiry = terms["expiry_block"]
    if not isinstance(expiry, int) or not latest_block <= expiry <= latest_block + ttl_blocks + 5:
        raise Refused(
            f"expiry block {expiry} outside [{latest_block}, {latest_block + ttl_blocks + 5}]",
            reason="bad_expiry_block",
        )
    mine = quote_terms(request, network, expiry_block=expiry, quoted_by=quoted_by)
    if (
        terms["amount_wei"] != mine["amount_wei"]
        or terms["credit_price_wei"] != mine["credit_price_wei"]
    ):
        raise Refused(
            f"quoted {terms['amount_wei']} wei; this peer prices it {mine['amount_wei']} wei",
            reason="price_mismatch",
        )
    for key, value in mine.items():
        if terms[key] != value:
            raise Refused(
                f"{key}: quoted {terms[key]!r}, expected {value!r}", reason="terms_mismatch"
            )


def _split(cert: Any, sig_key: str) -> tuple[dict[str, Any], list[Any]]:
    if not isinstance(cert, dict) or set(cert) != {"terms", sig_key}:
        raise BadRequest(f'expected {{"terms": ..., "{sig_key}": [...]}}')
    if not isinstance(cert["terms"], dict) or not isinstance(cert[sig_key], list):
        raise BadRequest(f"terms must be an object and {sig_key} a list")
    return cert["terms"], cert[sig_key]


def _certified(
    kind: str,
    terms: dict[str, Any],
    sigs: list[Any],
    network: NetworkFile,
    eligible: Collection[str],
    quorum: int | None,
) -> None:
    if terms.get("network_id") != network.network_id or terms.get("chain_id") != network.chain_id:
        raise Refused("terms are for another network or chain", reason="wrong_network")
    try:
        verify_certificate(
            kind,
            terms,
            sigs,
            chain_id=network.chain_id,
            network_id=network.network_id,
            eligible=eligible,
            quorum=quorum,
        )
    except CertificateError as exc:
        raise Refused(f"{kind} certificate refused: {exc}", reason=exc.reason) from exc


def verify_quote(
    quote: Any, network: NetworkFile, eligible: Collection[str], quorum: int | None
) -> dict[str, Any]:
    terms, agreements = _split(quote, "agreements")
    if set(terms) != QUOTE_FIELDS:
        raise BadRequest(f"quote terms must have exactly {sorted(QUOTE_FIELDS)}")
    if terms["payment_address"] != network.payment_address:
        raise Refused("the quote names another payment address", reason="wrong_payment_address")
    _certified(QUOTE_KIND, terms, agreements, network, eligible, quorum)
    return terms


def pack_terms(quote: dict[str, Any], tx_hash: str, block_number: int) -> dict[str, Any]:
    return {
        "pack_id": quote["purchase_id"],
        "purchase_id": quote["purchase_id"],
        "buyer": quote["buyer"],
        "credits": quote["credits"],
        "amount_wei": quote["amount_wei"],
        "tx_hash": tx_hash,
        "block_number": block_number,
        "network_id": quote["network_id"],
        "chain_id": quote["chain_id"],
    }


def verify_pack_certificate(
    cert: Any, network: NetworkFile, eligible: Collection[str], quorum: int | None
) -> dict[str, Any]:
    terms, sigs = _split(cert, "signatures")
    if set(terms) != PACK_FIELDS or terms["pack_id"] != terms["purchase_id"]:
        raise BadRequest(f"pack terms must have exactly {sorted(PACK_FIELDS)}")
    _certified(PACK_KIND, terms, sigs, network, eligible, quorum)
    return terms
