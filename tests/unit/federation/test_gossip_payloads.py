"""The gossip types' payloads, typed: each handler's check opens a well-formed payload
into its model (what ``store`` then writes), and refuses a bad shape as ``bad_payload``,
naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from supernode.crypto.envelope import Envelope, EnvelopeError, sign_envelope
from supernode.crypto.keys import Identity
from supernode.federation.challenges import challenge_text
from supernode.federation.messaging import (
    SEND_USER_MESSAGE_ENDPOINT,
    SnMessageHandler,
    UserMessageHandler,
)
from supernode.inference.handlers import RefundHandler, ResultSummariesHandler
from supernode.ledger import MAX_INTEGER

MEMBER = Identity(bytes([1]) * 32)
USER = Identity(bytes([2]) * 32)
H = "0x" + "ab" * 32
H2 = "0x" + "cd" * 32


def env(type_: str, payload: dict[str, Any]) -> Envelope:
    return sign_envelope(MEMBER, type_=type_, network_id="n", chain_id=1, payload=payload)


SUMMARY = {
    "request_id": H,
    "model": "tiny",
    "status": "completed",
    "result_hash": H,
    "input_tokens": 3,
    "output_tokens": 2,
    "latency_ms": 40,
}
REFUND = {"pack_id": H, "sequence": 0, "request_id": H, "amount": 5, "reason": "unused"}


def user_message(**changes: Any) -> dict[str, Any]:
    expires = 2_000_000_000
    text = challenge_text("n", USER.address, SEND_USER_MESSAGE_ENDPOINT, "0x01", expires)
    p = {
        "from_address": USER.address,
        "to_address": MEMBER.address,
        "message_body": "hello",
        "challenge_id": "0x01",
        "challenge_expires_at": expires,
        "challenge_signature": USER.sign_text(text),
    }
    return {**p, **changes}


HANDLERS = {
    "inference_results": ResultSummariesHandler(),
    "spend_refund": RefundHandler(),
    "sn_message": SnMessageHandler(max_chars=10),
    "user_message": UserMessageHandler("n", max_chars=10),
}


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        ("inference_results", {"results": [SUMMARY]}),
        (
            "inference_results",
            {"results": [{**SUMMARY, "status": "failed", "result_hash": None, "request_id": H2}]},
        ),
        (
            "inference_results",
            {"results": [{**SUMMARY, "request_id": f"0x{i:064x}"} for i in range(32)]},
        ),
        ("spend_refund", REFUND),
        ("sn_message", {"message_type": "a.b:c-d_e", "message_body": "0123456789"}),
        ("user_message", user_message()),
    ],
)
def test_a_well_formed_payload_opens_into_its_model(type_: str, payload: dict[str, Any]) -> None:
    opened = HANDLERS[type_].validate(env(type_, payload))
    assert opened.model_dump() == payload


@pytest.mark.parametrize(
    ("type_", "payload", "field"),
    [
        ("inference_results", {"results": [{**SUMMARY, "status": "running"}]}, "status"),
        ("inference_results", {"results": [{**SUMMARY, "request_id": "0x12"}]}, "request_id"),
        ("inference_results", {"results": [{**SUMMARY, "input_tokens": -1}]}, "input_tokens"),
        (
            "inference_results",
            {"results": [{**SUMMARY, "output_tokens": MAX_INTEGER + 1}]},
            "output_tokens",
        ),
        ("inference_results", {"results": [{**SUMMARY, "latency_ms": True}]}, "latency_ms"),
        ("inference_results", {"results": [{**SUMMARY, "model": "m" * 129}]}, "model"),
        ("inference_results", {"results": [{**SUMMARY, "extra": 1}]}, "extra"),
        (
            "inference_results",
            {"results": [{k: v for k, v in SUMMARY.items() if k != "model"}]},
            "model",
        ),
        ("inference_results", {"results": []}, "results"),
        ("inference_results", {"results": [SUMMARY] * 33}, "results"),
        ("inference_results", {"results": [SUMMARY, SUMMARY]}, "twice"),
        ("inference_results", {**{"results": [SUMMARY]}, "extra": 1}, "extra"),
        ("spend_refund", {**REFUND, "amount": 0}, "amount"),
        ("spend_refund", {**REFUND, "sequence": "0"}, "sequence"),
        ("spend_refund", {**REFUND, "reason": "r" * 65}, "reason"),
        ("sn_message", {"message_type": "has space", "message_body": "x"}, "message_type"),
        ("sn_message", {"message_type": "t", "message_body": 5}, "message_body"),
        ("sn_message", {"message_type": "t", "message_body": "x" * 11}, "message_body"),
        ("user_message", user_message(to_address=MEMBER.address.lower()), "to_address"),
        ("user_message", user_message(challenge_expires_at=-1), "challenge_expires_at"),
        ("user_message", user_message(challenge_signature="0x" + "00" * 200), "signature"),
    ],
)
def test_a_bad_shape_is_bad_payload_naming_the_field(
    type_: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(EnvelopeError) as refused:
        HANDLERS[type_].validate(env(type_, payload))
    assert refused.value.reason == "bad_payload"
    assert field in refused.value.detail


def test_a_user_message_not_signed_by_its_sender_is_refused() -> None:
    forged = user_message(from_address=MEMBER.address)  # signed by USER, claims MEMBER
    with pytest.raises(EnvelopeError) as refused:
        HANDLERS["user_message"].validate(env("user_message", forged))
    assert refused.value.reason == "bad_user_signature"
