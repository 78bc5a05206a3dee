"""Signed envelopes: the unit of everything that crosses a process boundary.

Checks run cheapest first: schema (pydantic), id recomputed, binding (network, chain,
recipient), time window, then the signature. Seen-before and banned-sender checks need the
ledger and live in the federation intake, between the schema and the signature.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, TypeVar

import coincurve
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from supernode.crypto.canonical import CanonicalError, payload_hash
from supernode.crypto.eip712 import envelope_digest
from supernode.crypto.keys import Identity, address_from_public_key
from supernode.errors import BadRequest, EnvelopeError

ENVELOPE_VERSION = 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
RECOVERED_CACHE = 16_384  # signatures whose recovered signer is remembered

HexAddress = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
Hex32 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{64}$")]
TypeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


@lru_cache(maxsize=65536)
def _checksum(value: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(value)


_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _must_be_checksummed(value: str) -> str:
    if _checksum(value) != value:
        raise ValueError("address must be checksummed (EIP-55)")
    return value


# an address as payloads carry it: 0x and 40 hex digits, EIP-55 checksummed
ChecksumAddress = Annotated[
    str,
    StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$"),
    AfterValidator(_must_be_checksummed),
]


def is_checksummed(value: str) -> bool:
    """An EIP-55 checksummed address (eth_utils.is_checksum_address, remembered: the same
    few member addresses come back in every spend order)."""
    return _HEX_ADDRESS.fullmatch(value) is not None and _checksum(value) == value


class Envelope(BaseModel):
    """A signed envelope as it travels (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: TypeName
    version: int = Field(ge=1, le=1)
    network_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    chain_id: int = Field(ge=1, lt=1 << 64)
    sender: HexAddress
    recipient: HexAddress | None
    id: Hex32
    created_at: int = Field(ge=0, lt=1 << 40)
    expires_at: int = Field(ge=0, lt=1 << 40)
    payload: dict[str, Any]
    signature: Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]*$", max_length=132)]

    @field_validator("sender", "recipient")
    @classmethod
    def _checksummed(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if _checksum(value) != value:
            raise ValueError("address must be checksummed (EIP-55)")
        return value

    def digest(self) -> bytes:
        """Recompute the EIP-712 digest from the signed fields."""
        try:
            phash = payload_hash(self.payload)
        except CanonicalError as exc:
            raise EnvelopeError("bad_payload", exc.detail) from exc
        return envelope_digest(
            type_=self.type,
            version=self.version,
            network_id=self.network_id,
            chain_id=self.chain_id,
            sender=self.sender,
            recipient=self.recipient,
            created_at=self.created_at,
            expires_at=self.expires_at,
            payload_hash=phash,
        )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump()


def sign_envelope(
    identity: Identity,
    *,
    type_: str,
    network_id: str,
    chain_id: int,
    payload: dict[str, Any],
    recipient: str | None = None,
    ttl_s: int = 3600,
    now: int | None = None,
) -> Envelope:
    """Build and sign an envelope from ``identity``."""
    created = int(time.time()) if now is None else now
    fields = {
        "type": type_,
        "version": ENVELOPE_VERSION,
        "network_id": network_id,
        "chain_id": chain_id,
        "sender": identity.address,
        "recipient": recipient,
        "created_at": created,
        "expires_at": created + ttl_s,
        "payload": payload,
    }
    digest = envelope_digest(
        type_=type_,
        version=ENVELOPE_VERSION,
        network_id=network_id,
        chain_id=chain_id,
        sender=identity.address,
        recipient=recipient,
        created_at=created,
        expires_at=created + ttl_s,
        payload_hash=payload_hash(payload),
    )
    signature = "0x" + identity.sign_digest(digest).hex()
    remember_signer(digest, signature, identity.address)
    return Envelope(**fields, id="0x" + digest.hex(), signature=signature)


def recover_signer(digest: bytes, signature_hex: str) -> str:
    """The address that signed ``digest``; refuses empty, malformed and high-s signatures.

    Successful recoveries are remembered (bounded LRU), and so are this process's own
    signatures (``remember_signer``): the same signature comes back several times per
    spend (an order at its vote and in its certificate, a member's vote in the
    certificate, a delegation on every order under it), and recovery is the costliest
    step of a check."""
    key = (digest, signature_hex)
    signer = _recovered.get(key)
    if signer is not None:
        _recovered.move_to_end(key)
        return signer
    signer = _recover_signer(digest, signature_hex)
    remember_signer(digest, signature_hex, signer)
    return signer


_recovered: OrderedDict[tuple[bytes, str], str] = OrderedDict()


def remember_signer(digest: bytes, signature_hex: str, signer: str) -> None:
    """Note that ``signer`` signed ``digest`` (a signature made or checked here)."""
    _recovered[(digest, signature_hex)] = signer
    if len(_recovered) > RECOVERED_CACHE:
        _recovered.popitem(last=False)


def _recover_signer(digest: bytes, signature_hex: str) -> str:
    if signature_hex in ("", "0x"):
        raise EnvelopeError("empty_signature")
    try:
        sig = bytes.fromhex(signature_hex[2:])
    except ValueError as exc:
        raise EnvelopeError("bad_signature", "not hex") from exc
    if len(sig) != 65:
        raise EnvelopeError("bad_signature", f"{len(sig)} bytes, expected 65")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    v = sig[64]
    if v not in (27, 28):
        raise EnvelopeError("bad_signature", "v must be 27 or 28")
    if not (0 < r < SECP256K1_N) or not (0 < s < SECP256K1_N):
        raise EnvelopeError("bad_signature", "r or s out of range")
    if s > SECP256K1_HALF_N:
        raise EnvelopeError("high_s_signature", "malleable twin (s > n/2)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            sig[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception on unrecoverable input
        raise EnvelopeError("bad_signature", "does not recover") from exc
    return address_from_public_key(public.format(compressed=False))


def check_id(env: Envelope) -> bytes:
    """Recompute the digest and compare it with the claimed id; returns the digest."""
    digest = env.digest()
    if "0x" + digest.hex() != env.id:
        raise EnvelopeError("id_mismatch", "id is not the EIP-712 hash of the fields")
    return digest


def check_window(env: Envelope, clock_skew_s: int, now: float | None = None) -> None:
    """``env`` is valid now (within the clock-skew window): EnvelopeError if it is from
    the future or expired."""
    t = time.time() if now is None else now
    if env.created_at > t + clock_skew_s:
        raise EnvelopeError(
            "from_future", "created_at beyond the clock-skew window", penalise=False
        )
    if env.expires_at < t - clock_skew_s:
        raise EnvelopeError("expired", "past expires_at", penalise=False)


def check_envelope(
    env: Envelope,
    *,
    network_id: str,
    chain_id: int,
    me: str | None,
    clock_skew_s: int,
    max_ttl_s: int,
    now: float | None = None,
    digest: bytes | None = None,
) -> bytes:
    """Run the stateless checks on ``env``; returns its digest. Raises EnvelopeError.

    ``digest`` may be passed when the caller already recomputed and compared the id."""
    if digest is None:
        digest = check_id(env)
    if env.network_id != network_id:
        raise EnvelopeError("wrong_network", env.network_id)
    if env.chain_id != chain_id:
        raise EnvelopeError("wrong_chain", str(env.chain_id))
    if env.recipient is not None and env.recipient != me:
        raise EnvelopeError("wrong_recipient", env.recipient)
    if env.expires_at <= env.created_at:
        raise EnvelopeError("bad_expiry", "expires_at must follow created_at")
    if env.expires_at - env.created_at > max_ttl_s:
        raise EnvelopeError("bad_expiry", f"lifetime over {max_ttl_s} s")
    check_window(env, clock_skew_s, now)
    signer = recover_signer(digest, env.signature)
    if signer != env.sender:
        raise EnvelopeError("bad_signature", "signer is not the sender")
    return digest


def parse_envelope(raw: Any, what: str) -> Envelope:
    """The envelope in ``raw`` (its shape only), or BadRequest naming the first problem."""
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"{what} malformed: {where}: {first['msg']}".replace(":  :", ":")) from exc


P = TypeVar("P", bound=BaseModel)


class Payload(BaseModel):
    """Base of the typed payloads: strict (no coercion: a "5" is not 5, a true not 1),
    frozen, and no field it does not name."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def payload_of(env: Envelope, payload: type[P]) -> P:
    """``env``'s payload as the typed model ``payload``, for a gossip handler's check of
    an envelope already opened: EnvelopeError ``bad_payload`` naming the field if not."""
    try:
        return payload.model_validate(env.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise EnvelopeError("bad_payload", f"{where}: {first['msg']}") from exc


def open_envelope(
    raw: Any,
    type_: str,
    payload: type[P],
    *,
    network_id: str,
    chain_id: int,
    me: str | None,
    clock_skew_s: int,
    max_ttl_s: int,
    precheck: Callable[[Envelope], None] | None = None,
) -> tuple[Envelope, P]:
    """The one way an envelope from outside is opened. Cheapest first: its shape, its
    type and its payload's shape (``payload``, a typed model) raise BadRequest; then every
    stateless check and the signature raise EnvelopeError with the reason (its binding to
    this network, chain and recipient, its time window, a low-s signature by its sender).
    ``me`` None: an envelope addressed to no one. ``precheck``, the caller's own cheap
    checks (who may send it), runs before the signature. Returns the envelope and its
    payload, typed."""
    env = parse_envelope(raw, f"{type_} envelope")
    if env.type != type_:
        raise BadRequest(f"expected a {type_} envelope, not {env.type}")
    try:
        typed = payload.model_validate(env.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"{type_} payload: {where}: {first['msg']}") from exc
    if precheck is not None:
        precheck(env)
    check_envelope(
        env,
        network_id=network_id,
        chain_id=chain_id,
        me=me,
        clock_skew_s=clock_skew_s,
        max_ttl_s=max_ttl_s,
    )
    return env, typed
