"""Signing keys and encrypted keystores (the eth-account / geth keyfile v3 format)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import coincurve
from eth_account import Account
from eth_utils import to_checksum_address

from supernode.crypto.hashing import keccak
from supernode.errors import KeystoreError

# scrypt cost for keystores. The standard (geth) cost takes about a second to open;
# "light" (geth's --lightkdf) is for devnets and tests that open many keystores.
SCRYPT_N_STANDARD = 1 << 18
SCRYPT_N_LIGHT = 1 << 12

WEAK_PASSPHRASES = {"", "password", "changeme", "change-me", "supernode", "secret", "123456"}
MIN_PASSPHRASE_CHARS = 12


@lru_cache(maxsize=65536)
def address_from_public_key(public_key_uncompressed: bytes) -> str:
    """Checksummed address of a 65-byte uncompressed secp256k1 public key (cached: the
    same few members sign most envelopes, and checksumming costs a keccak)."""
    return to_checksum_address(keccak(public_key_uncompressed[1:])[-20:])


@dataclass(frozen=True)
class Identity:
    """A secp256k1 key pair and its Ethereum address: a supernode's or a user's id."""

    private_key: bytes

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise ValueError("a private key is 32 bytes")

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_hex(cls, key_hex: str) -> Identity:
        return cls(bytes.fromhex(key_hex.removeprefix("0x")))

    # Derived once per identity (cached_property writes the instance dict directly, which
    # a frozen dataclass allows).
    @cached_property
    def _signer(self) -> coincurve.PrivateKey:
        return coincurve.PrivateKey(self.private_key)

    @cached_property
    def public_key(self) -> bytes:
        """65-byte uncompressed public key."""
        return self._signer.public_key.format(compressed=False)

    @property
    def public_key_hex(self) -> str:
        return "0x" + self.public_key.hex()

    @cached_property
    def address(self) -> str:
        return address_from_public_key(self.public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte Ethereum signature r || s || v (v = 27 or 28) over a 32-byte digest.

        libsecp256k1 always produces the low-s form, so signatures are not malleable.
        """
        sig = self._signer.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([27 + sig[64]])

    def sign_text(self, text: str) -> str:
        """EIP-191 personal_sign of ``text`` (what a wallet signs), 0x-hex."""
        from eth_account.messages import encode_defunct

        signed = Account.sign_message(encode_defunct(text=text), self.private_key)
        return signed.signature.to_0x_hex()


def read_passphrase(passphrase: str | None, passphrase_file: Path | None) -> str:
    """The keystore passphrase from a value or a file (the file wins when both are set)."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_text().strip()
        except OSError as exc:
            raise KeystoreError(f"cannot read passphrase file {passphrase_file}: {exc}") from exc
    if passphrase is None:
        raise KeystoreError("no keystore passphrase: set a passphrase or a passphrase file")
    return passphrase


def check_passphrase_strength(passphrase: str) -> None:
    if passphrase.lower() in WEAK_PASSPHRASES or len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KeystoreError(
            f"keystore passphrase refused: use at least {MIN_PASSPHRASE_CHARS} characters "
            "and not a well-known default"
        )


def write_keystore(path: Path, identity: Identity, passphrase: str, *, light: bool = False) -> None:
    """Encrypt ``identity`` into ``path`` (mode 0600); refuses to overwrite."""
    check_passphrase_strength(passphrase)
    if path.exists():
        raise KeystoreError(f"{path} exists; refusing to overwrite a keystore")
    n = SCRYPT_N_LIGHT if light else SCRYPT_N_STANDARD
    keyfile = Account.encrypt(identity.private_key, passphrase, kdf="scrypt", iterations=n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keyfile, fh)


def load_keystore(path: Path, passphrase: str) -> Identity:
    try:
        keyfile = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeystoreError(f"no keystore at {path}; create one with `supernode keygen`") from exc
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc}") from exc
    try:
        key = Account.decrypt(keyfile, passphrase)
    except ValueError as exc:
        raise KeystoreError(f"cannot open keystore {path}: wrong passphrase?") from exc
    return Identity(bytes(key))


def write_secret_file(path: Path, value: str) -> None:
    """Write a secret (a passphrase, a token) readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
