"""Single-use challenges: how a user (or the operator) proves an address.

`/request_challenge/{address}?endpoint=E` hands out a challenge bound to the address, the
endpoint and this network; the caller signs its text with EIP-191 (any wallet's
personal_sign) and sends the id and signature. A challenge answers once (the used ids are
in the ledger, so a restart does not reopen them) and expires after a few minutes. Handing
one out stores nothing (see ChallengeBook).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_defunct

from supernode.errors import ChallengeError
from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger

NONCE_BYTES = 8  # random part of a challenge id
MAC_BYTES = 16  # keyed-hash part of a challenge id


def challenge_text(
    network_id: str, address: str, endpoint: str, challenge_id: str, expires_at: int
) -> str:
    """The exact text a user signs. Peers rebuild it to check a relayed signature."""
    return (
        "Supernode authentication\n"
        f"network: {network_id}\n"
        f"address: {address}\n"
        f"endpoint: {endpoint}\n"
        f"challenge: {challenge_id}\n"
        f"expires: {expires_at}"
    )


def recover_text_signer(text: str, signature: str) -> str:
    try:
        return Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception as exc:  # noqa: BLE001 - eth-account raises several types
        raise ChallengeError("signature does not recover") from exc


@dataclass(frozen=True)
class Challenge:
    challenge_id: str
    address: str
    endpoint: str
    expires_at: int
    text: str


class ChallengeBook:
    """Challenges that cost the daemon no memory to hand out.

    A challenge id is 32 bytes: a random nonce (8), the expiry time (8) and a keyed hash
    (16) of the nonce, the expiry, the address and the endpoint under a key only this
    daemon holds (derived from its node key, so a restart keeps them valid). Answering
    recomputes the hash: a forged or altered id is refused before any signature is
    checked, and only answered ids are stored (to refuse a second answer until they
    expire). A flood of requests therefore neither fills memory nor crowds out anyone.
    """

    def __init__(self, db: Ledger, network_id: str, ttl_s: int, key: bytes) -> None:
        self.db = db
        self.network_id = network_id
        self.ttl_s = ttl_s
        self._key = key

    def _mac(self, nonce: bytes, expires_at: int, address: str, endpoint: str) -> bytes:
        msg = b"|".join([nonce, expires_at.to_bytes(8, "big"), address.encode(), endpoint.encode()])
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, address: str, endpoint: str) -> Challenge:
        expires = int(time.time()) + self.ttl_s
        nonce = secrets.token_bytes(NONCE_BYTES)
        raw = nonce + expires.to_bytes(8, "big") + self._mac(nonce, expires, address, endpoint)
        cid = "0x" + raw.hex()
        text = challenge_text(self.network_id, address, endpoint, cid, expires)
        return Challenge(cid, address, endpoint, expires, text)

    def _opened(self, challenge_id: str, address: str, endpoint: str) -> Challenge:
        """The challenge this id stands for, if this daemon issued it for ``address`` and
        ``endpoint``; ChallengeError otherwise."""
        try:
            raw = bytes.fromhex(challenge_id.removeprefix("0x"))
        except ValueError:
            raw = b""
        if not challenge_id.startswith("0x") or len(raw) != NONCE_BYTES + 8 + MAC_BYTES:
            raise ChallengeError("not a challenge id of this daemon")
        nonce, expires = raw[:NONCE_BYTES], int.from_bytes(raw[NONCE_BYTES : NONCE_BYTES + 8])
        mac = raw[NONCE_BYTES + 8 :]
        if not hmac.compare_digest(mac, self._mac(nonce, expires, address, endpoint)):
            raise ChallengeError("not a challenge this daemon issued for that address and endpoint")
        text = challenge_text(self.network_id, address, endpoint, challenge_id, expires)
        return Challenge(challenge_id, address, endpoint, expires, text)

    async def answer(
        self, address: str, endpoint: str, challenge_id: str, signature: str
    ) -> Challenge:
        """Check an answer and use the challenge up. Raises ChallengeError with the reason."""
        ch = self._opened(challenge_id.lower(), address, endpoint)
        if ch.expires_at < time.time():
            raise ChallengeError("challenge expired")
        if recover_text_signer(ch.text, signature) != address:
            raise ChallengeError("signature is not by that address")
        async with self.db.write(peers_repo.USED_CHALLENGES) as conn:
            if not peers_repo.use_challenge(conn, ch.challenge_id, address, ch.expires_at):
                raise ChallengeError("challenge already used")
        return ch

    async def prune(self) -> int:
        """Forget answered challenges past their expiry (they are refused as expired)."""
        async with self.db.write(peers_repo.USED_CHALLENGES) as conn:
            return peers_repo.prune_used_challenges(conn, time.time())


def challenge_key(identity_key: bytes) -> bytes:
    """The challenge key: derived from the node key, for nothing else."""
    return hmac.new(identity_key, b"supernode challenge key v1", hashlib.sha256).digest()
