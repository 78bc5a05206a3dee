"""Single-use challenges: how a user (or the operator) proves an address.

`/request_challenge/{address}?endpoint=E` hands out a challenge bound to the address, the
endpoint and this network; the caller signs its text with EIP-191 (any wallet's
personal_sign) and sends the id and signature. A challenge answers once (the used ids are
in the ledger, so a restart does not reopen them) and expires after a few minutes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_defunct

from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Database

MAX_OPEN_CHALLENGES = 100_000


class ChallengeError(ValueError):
    """The challenge answer does not hold; the message says why."""


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
    def __init__(self, db: Database, network_id: str, ttl_s: int) -> None:
        self.db = db
        self.network_id = network_id
        self.ttl_s = ttl_s
        self._open: dict[str, Challenge] = {}

    def issue(self, address: str, endpoint: str) -> Challenge:
        now = time.time()
        if len(self._open) >= MAX_OPEN_CHALLENGES:
            self.prune(now)
        if len(self._open) >= MAX_OPEN_CHALLENGES:
            raise ChallengeError("too many open challenges; try again shortly")
        cid = "0x" + secrets.token_hex(32)
        expires = int(now) + self.ttl_s
        ch = Challenge(
            cid,
            address,
            endpoint,
            expires,
            challenge_text(self.network_id, address, endpoint, cid, expires),
        )
        self._open[cid] = ch
        return ch

    def prune(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        stale = [k for k, c in self._open.items() if c.expires_at < t]
        for k in stale:
            del self._open[k]
        return len(stale)

    async def answer(
        self, address: str, endpoint: str, challenge_id: str, signature: str
    ) -> Challenge:
        """Check an answer and use the challenge up. Raises ChallengeError with the reason."""
        ch = self._open.pop(challenge_id, None)
        if ch is None:
            raise ChallengeError("unknown or already used challenge")
        if ch.address != address:
            raise ChallengeError("challenge was issued for another address")
        if ch.endpoint != endpoint:
            raise ChallengeError(f"challenge was issued for {ch.endpoint}, not {endpoint}")
        if ch.expires_at < time.time():
            raise ChallengeError("challenge expired")
        if recover_text_signer(ch.text, signature) != address:
            raise ChallengeError("signature is not by that address")
        async with self.db.write() as conn:
            if not await peers_repo.use_challenge(conn, ch.challenge_id, address, ch.expires_at):
                raise ChallengeError("challenge already used")
        return ch
