"""Envelopes: EIP-712 digest, signing, and every refusal of check_envelope."""

from __future__ import annotations

import time

import pytest
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from supernode.crypto.canonical import payload_hash
from supernode.crypto.eip712 import typed_data
from supernode.crypto.envelope import (
    SECP256K1_N,
    Envelope,
    EnvelopeError,
    check_envelope,
    recover_signer,
    sign_envelope,
)
from supernode.crypto.keys import Identity

NET, CHAIN = "test-net", 31337
ALICE = Identity(bytes.fromhex("11" * 32))
BOB = Identity(bytes.fromhex("22" * 32))

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**255), max_value=2**256),
    st.text(max_size=20),
)
payloads = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        json_leaf,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


def check(env: Envelope, **kw: object) -> bytes:
    args = {
        "network_id": NET,
        "chain_id": CHAIN,
        "me": BOB.address,
        "clock_skew_s": 30,
        "max_ttl_s": 10**7,
    }
    args.update(kw)
    return check_envelope(env, **args)  # type: ignore[arg-type]


def signed(payload: dict | None = None, **kw: object) -> Envelope:
    args: dict = {
        "type_": "sn_message",
        "network_id": NET,
        "chain_id": CHAIN,
        "payload": payload if payload is not None else {"x": 1},
    }
    args.update(kw)
    return sign_envelope(ALICE, **args)


@settings(max_examples=60, deadline=None)
@given(
    payload=payloads,
    recipient=st.sampled_from([None, BOB.address]),
    ttl=st.integers(min_value=1, max_value=10**6),
)
def test_round_trip_through_json(payload: dict, recipient: str | None, ttl: int) -> None:
    env = signed(payload, recipient=recipient, ttl_s=ttl)
    again = Envelope.model_validate_json(env.model_dump_json())
    assert again == env
    assert "0x" + check(again).hex() == env.id


@settings(max_examples=40, deadline=None)
@given(
    payload=payloads,
    chain=st.integers(min_value=1, max_value=2**63),
    net=st.text(min_size=1, max_size=40),
    created=st.integers(min_value=0, max_value=2**39),
)
def test_hand_digest_equals_eth_account(payload: dict, chain: int, net: str, created: int) -> None:
    env = sign_envelope(
        ALICE,
        type_="t",
        network_id=net,
        chain_id=chain,
        payload=payload,
        recipient=BOB.address,
        ttl_s=60,
        now=created,
    )
    fields = {**env.model_dump(), "payload_hash": payload_hash(payload)}
    expected = _hash_eip191_message(encode_typed_data(full_message=typed_data(fields)))
    assert env.id == "0x" + expected.hex()


@pytest.mark.parametrize(
    "field,value",
    [
        ("type", "other_type"),
        ("network_id", "other-net"),
        ("sender", BOB.address),
        ("recipient", BOB.address),
        ("created_at", -5),  # seconds from now, resolved when the test runs
        ("expires_at", 99),
        ("payload", {"x": 2}),
    ],
)
def test_changing_any_signed_field_breaks_it(field: str, value: object) -> None:
    env = signed()
    if field in ("created_at", "expires_at"):
        value = int(time.time()) + value  # type: ignore[operator]
    tampered = Envelope.model_validate({**env.model_dump(), field: value})
    # with the original id: the id no longer matches the fields
    with pytest.raises(EnvelopeError) as err:
        check(tampered, network_id=tampered.network_id)
    assert err.value.reason == "id_mismatch"
    # with the id recomputed to match: the signature no longer does
    rehashed = Envelope.model_validate(
        {**tampered.model_dump(), "id": "0x" + tampered.digest().hex()}
    )
    with pytest.raises(EnvelopeError) as err:
        check(rehashed, network_id=tampered.network_id)
    assert err.value.reason == "bad_signature"


def test_version_other_than_1_refused_by_schema() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Envelope.model_validate({**signed().model_dump(), "version": 2})


def test_high_s_twin_refused() -> None:
    env = signed()
    sig = bytes.fromhex(env.signature[2:])
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    digest = env.digest()
    # the twin is a valid signature by the same key in the pure math sense ...
    import coincurve

    pub = coincurve.PublicKey.from_signature_and_message(
        twin[:64] + bytes([twin[64] - 27]), digest, hasher=None
    )
    assert pub.format(compressed=False) == ALICE.public_key
    # ... but we refuse it
    forged = Envelope.model_validate({**env.model_dump(), "signature": "0x" + twin.hex()})
    with pytest.raises(EnvelopeError) as err:
        check(forged)
    assert err.value.reason == "high_s_signature"


@pytest.mark.parametrize("sig", ["", "0x"])
def test_empty_signature_refused(sig: str) -> None:
    env = Envelope.model_validate({**signed().model_dump(), "signature": sig or "0x"})
    with pytest.raises(EnvelopeError) as err:
        check(env)
    assert err.value.reason == "empty_signature"


def test_signature_by_someone_else_refused() -> None:
    env = signed()
    other = sign_envelope(BOB, type_="sn_message", network_id=NET, chain_id=CHAIN, payload={"x": 1})
    forged = Envelope.model_validate({**env.model_dump(), "signature": other.signature})
    with pytest.raises(EnvelopeError) as err:
        check(forged)
    assert err.value.reason == "bad_signature"


def test_garbage_signature_refused() -> None:
    env = Envelope.model_validate({**signed().model_dump(), "signature": "0x" + "00" * 65})
    with pytest.raises(EnvelopeError) as err:
        recover_signer(env.digest(), env.signature)
    assert err.value.reason == "bad_signature"


def test_wrong_chain_network_recipient_refused() -> None:
    with pytest.raises(EnvelopeError) as err:
        check(signed(), chain_id=1)
    assert err.value.reason == "wrong_chain"
    with pytest.raises(EnvelopeError) as err:
        check(signed(), network_id="another")
    assert err.value.reason == "wrong_network"
    carol = Identity(bytes.fromhex("33" * 32))
    with pytest.raises(EnvelopeError) as err:
        check(signed(recipient=carol.address), me=BOB.address)
    assert err.value.reason == "wrong_recipient"
    assert check(signed(recipient=BOB.address), me=BOB.address)


def test_expired_and_future_refused_without_penalty() -> None:
    now = int(time.time())
    old = signed(now=now - 1000, ttl_s=100)
    with pytest.raises(EnvelopeError) as err:
        check(old)
    assert err.value.reason == "expired" and not err.value.penalise
    future = signed(now=now + 600, ttl_s=100)
    with pytest.raises(EnvelopeError) as err:
        check(future)
    assert err.value.reason == "from_future" and not err.value.penalise
    # inside the clock-skew window both are fine
    assert check(signed(now=now + 20, ttl_s=100))


def test_lifetime_over_the_limit_refused() -> None:
    with pytest.raises(EnvelopeError) as err:
        check(signed(ttl_s=10**6), max_ttl_s=3600)
    assert err.value.reason == "bad_expiry"


def test_floats_refused_in_payload() -> None:
    env = Envelope.model_validate({**signed().model_dump(), "payload": {"amount": 1.5}})
    with pytest.raises(EnvelopeError) as err:
        check(env)
    assert err.value.reason == "bad_payload"


def test_lowercase_sender_refused_by_schema() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Envelope.model_validate({**signed().model_dump(), "sender": ALICE.address.lower()})
