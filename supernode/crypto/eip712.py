"""EIP-712 digests for our fixed envelope type, computed by hand.

`eth_account.messages.encode_typed_data` gives the same digest (a unit test checks this on
random inputs) but costs ~8x more; the domain separator is cached per (chain, network).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from supernode.crypto.hashing import keccak

DOMAIN_NAME = "supernode"
DOMAIN_VERSION = "1"
ZERO_ADDRESS = "0x" + "00" * 20

DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "salt", "type": "bytes32"},
]
ENVELOPE_TYPE = [
    {"name": "type", "type": "string"},
    {"name": "version", "type": "uint256"},
    {"name": "networkId", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "sender", "type": "address"},
    {"name": "recipient", "type": "address"},
    {"name": "createdAt", "type": "uint256"},
    {"name": "expiresAt", "type": "uint256"},
    {"name": "payloadHash", "type": "bytes32"},
]


def _type_string(name: str, fields: list[dict[str, str]]) -> bytes:
    return f"{name}({','.join(f['type'] + ' ' + f['name'] for f in fields)})".encode()


DOMAIN_TYPEHASH = keccak(_type_string("EIP712Domain", DOMAIN_TYPE))
ENVELOPE_TYPEHASH = keccak(_type_string("Envelope", ENVELOPE_TYPE))


def _uint(value: int) -> bytes:
    if value < 0 or value >= 1 << 256:
        raise ValueError("uint256 out of range")
    return value.to_bytes(32, "big")


def _address(value: str | None) -> bytes:
    raw = bytes.fromhex((value or ZERO_ADDRESS)[2:])
    if len(raw) != 20:
        raise ValueError("an address is 20 bytes")
    return b"\x00" * 12 + raw


def network_salt(network_id: str) -> bytes:
    return keccak(network_id.encode())


@lru_cache(maxsize=1024)
def _string_hash(value: str) -> bytes:
    """keccak of an EIP-712 string field: a few envelope types and one network id."""
    return keccak(value.encode())


@lru_cache(maxsize=64)
def domain_separator(chain_id: int, network_id: str) -> bytes:
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(DOMAIN_NAME.encode())
        + keccak(DOMAIN_VERSION.encode())
        + _uint(chain_id)
        + network_salt(network_id)
    )


def envelope_digest(
    *,
    type_: str,
    version: int,
    network_id: str,
    chain_id: int,
    sender: str,
    recipient: str | None,
    created_at: int,
    expires_at: int,
    payload_hash: bytes,
) -> bytes:
    """The EIP-712 digest (the envelope id) of an envelope's signed fields."""
    struct_hash = keccak(
        ENVELOPE_TYPEHASH
        + _string_hash(type_)
        + _uint(version)
        + _string_hash(network_id)
        + _uint(chain_id)
        + _address(sender)
        + _address(recipient)
        + _uint(created_at)
        + _uint(expires_at)
        + payload_hash
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id, network_id) + struct_hash)


def typed_data(fields: dict[str, Any]) -> dict[str, Any]:
    """The full EIP-712 typed-data message for an envelope (what a wallet would show)."""
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, "Envelope": ENVELOPE_TYPE},
        "primaryType": "Envelope",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": fields["chain_id"],
            "salt": network_salt(fields["network_id"]),
        },
        "message": {
            "type": fields["type"],
            "version": fields["version"],
            "networkId": fields["network_id"],
            "chainId": fields["chain_id"],
            "sender": fields["sender"],
            "recipient": fields["recipient"] or ZERO_ADDRESS,
            "createdAt": fields["created_at"],
            "expiresAt": fields["expires_at"],
            "payloadHash": fields["payload_hash"],
        },
    }
