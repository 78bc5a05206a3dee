"""Supernode messages and user messages: envelope types, their checks and storage."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from eth_utils import is_checksum_address

from supernode.crypto.envelope import Envelope, EnvelopeError
from supernode.federation.challenges import ChallengeError, challenge_text, recover_text_signer
from supernode.federation.handlers import Checked
from supernode.ledger import MAX_INTEGER
from supernode.ledger import messages as msg_repo

SN_MESSAGE = "sn_message"
USER_MESSAGE = "user_message"
SEND_USER_MESSAGE_ENDPOINT = "/send_user_message"
MESSAGE_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _str_field(payload: dict, name: str, max_chars: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise EnvelopeError("bad_payload", f"{name} must be a string")
    if len(value) > max_chars:
        raise EnvelopeError("bad_payload", f"{name} longer than {max_chars} characters")
    return value


class SnMessageHandler:
    """`sn_message`: {message_type, message_body}, to one supernode or to all."""

    type = SN_MESSAGE
    record = msg_repo.MESSAGES

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def validate(self, env: Envelope) -> None:
        if set(env.payload) != {"message_type", "message_body"}:
            raise EnvelopeError("bad_payload", "expected message_type and message_body")
        if not MESSAGE_TYPE_RE.match(_str_field(env.payload, "message_type", 64)):
            raise EnvelopeError("bad_payload", "message_type: 1-64 of A-Z a-z 0-9 _ . : -")
        _str_field(env.payload, "message_body", self.max_chars)

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        msg_repo.insert_messages(
            conn,
            [
                {
                    "envelope_id": c.env.id,
                    "sending_sn_address": c.env.sender,
                    "receiving_sn_address": c.env.recipient,
                    "message_type": c.env.payload["message_type"],
                    "message_body": c.env.payload["message_body"],
                    "signature": c.env.signature,
                    "timestamp": c.env.created_at,
                    "received_at": received_at,
                }
                for c in items
            ],
        )


class UserMessageHandler:
    """`user_message`: a user's message relayed by a supernode. The payload carries the
    user's answer to a challenge, so every peer can check the user really sent it."""

    type = USER_MESSAGE
    record = msg_repo.MESSAGES
    FIELDS = {
        "from_address",
        "to_address",
        "message_body",
        "challenge_id",
        "challenge_expires_at",
        "challenge_signature",
    }

    def __init__(self, network_id: str, max_chars: int) -> None:
        self.network_id = network_id
        self.max_chars = max_chars

    def validate(self, env: Envelope) -> None:
        p = env.payload
        if set(p) != self.FIELDS:
            raise EnvelopeError("bad_payload", f"expected fields {sorted(self.FIELDS)}")
        for name in ("from_address", "to_address"):
            v = _str_field(p, name, 42)
            if not is_checksum_address(v):
                raise EnvelopeError("bad_payload", f"{name} is not a checksummed address")
        _str_field(p, "message_body", self.max_chars)
        expires = p["challenge_expires_at"]
        if not isinstance(expires, int) or not 0 <= expires <= MAX_INTEGER:
            raise EnvelopeError("bad_payload", "challenge_expires_at must be a time (integer)")
        text = challenge_text(
            self.network_id,
            p["from_address"],
            SEND_USER_MESSAGE_ENDPOINT,
            _str_field(p, "challenge_id", 66),
            p["challenge_expires_at"],
        )
        try:
            signer = recover_text_signer(text, _str_field(p, "challenge_signature", 132))
        except ChallengeError as exc:
            raise EnvelopeError("bad_user_signature", exc.detail) from exc
        if signer != p["from_address"]:
            raise EnvelopeError("bad_user_signature", "challenge not signed by from_address")

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        msg_repo.insert_user_messages(
            conn,
            [
                {
                    "envelope_id": c.env.id,
                    "from_address": c.env.payload["from_address"],
                    "to_address": c.env.payload["to_address"],
                    "message_body": c.env.payload["message_body"],
                    "relayed_by": c.env.sender,
                    "timestamp": c.env.created_at,
                    "received_at": received_at,
                }
                for c in items
            ],
        )
