"""Supernode messages and user messages: envelope types, their checks and storage."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, StringConstraints

from supernode.crypto.envelope import ChecksumAddress, Envelope, EnvelopeError, Payload, payload_of
from supernode.federation.challenges import ChallengeError, challenge_text, recover_text_signer
from supernode.federation.handlers import Checked
from supernode.ledger import MAX_INTEGER
from supernode.ledger import messages as msg_repo

SN_MESSAGE = "sn_message"
USER_MESSAGE = "user_message"
SEND_USER_MESSAGE_ENDPOINT = "/send_user_message"


MessageType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class SnMessagePayload(Payload):
    message_type: MessageType
    message_body: str


class UserMessagePayload(Payload):
    from_address: ChecksumAddress
    to_address: ChecksumAddress
    message_body: str
    challenge_id: Annotated[str, StringConstraints(max_length=66)]
    challenge_expires_at: Annotated[int, Field(ge=0, le=MAX_INTEGER)]
    challenge_signature: Annotated[str, StringConstraints(max_length=132)]


def _body(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise EnvelopeError("bad_payload", f"message_body longer than {max_chars} characters")


class SnMessageHandler:
    """`sn_message`: {message_type, message_body}, to one supernode or to all."""

    type = SN_MESSAGE
    record = msg_repo.MESSAGES

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def validate(self, env: Envelope) -> SnMessagePayload:
        p = payload_of(env, SnMessagePayload)
        _body(p.message_body, self.max_chars)
        return p

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        msg_repo.insert_messages(
            conn,
            [
                {
                    "envelope_id": c.env.id,
                    "sending_sn_address": c.env.sender,
                    "receiving_sn_address": c.env.recipient,
                    "message_type": c.parsed.message_type,
                    "message_body": c.parsed.message_body,
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

    def __init__(self, network_id: str, max_chars: int) -> None:
        self.network_id = network_id
        self.max_chars = max_chars

    def validate(self, env: Envelope) -> UserMessagePayload:
        p = payload_of(env, UserMessagePayload)
        _body(p.message_body, self.max_chars)
        text = challenge_text(
            self.network_id,
            p.from_address,
            SEND_USER_MESSAGE_ENDPOINT,
            p.challenge_id,
            p.challenge_expires_at,
        )
        try:
            signer = recover_text_signer(text, p.challenge_signature)
        except ChallengeError as exc:
            raise EnvelopeError("bad_user_signature", exc.detail) from exc
        if signer != p.from_address:
            raise EnvelopeError("bad_user_signature", "challenge not signed by from_address")
        return p

    def store(self, conn: sqlite3.Connection, items: Sequence[Checked], received_at: float) -> None:
        msg_repo.insert_user_messages(
            conn,
            [
                {
                    "envelope_id": c.env.id,
                    "from_address": c.parsed.from_address,
                    "to_address": c.parsed.to_address,
                    "message_body": c.parsed.message_body,
                    "relayed_by": c.env.sender,
                    "timestamp": c.env.created_at,
                    "received_at": received_at,
                }
                for c in items
            ],
        )
