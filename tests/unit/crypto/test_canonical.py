"""Canonical JSON (what every signature covers) and keccak."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supernode.crypto.canonical import CanonicalError, canonical_json, stdlib_canonical_json
from supernode.crypto.hashing import eth_hash_keccak, keccak


def test_canonical_is_sorted_compact_utf8_and_exact_for_big_ints() -> None:
    assert canonical_json({"b": 1, "a": [2, {"d": 1, "c": "é"}]}) == (
        '{"a":[2,{"c":"é","d":1}],"b":1}'.encode()
    )
    big = 10**30
    assert canonical_json({"wei": big}) == b'{"wei":' + str(big).encode() + b"}"


@given(st.dictionaries(st.text(), st.integers()))
def test_canonical_ignores_insertion_order(d: dict) -> None:
    assert canonical_json(d) == canonical_json(dict(reversed(list(d.items()))))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_are_the_stdlib_encoders(value: object) -> None:
    # orjson writes them (integers past 64 bits go to the stdlib): the bytes must not differ
    assert canonical_json(value) == stdlib_canonical_json(value)


def test_canonical_refuses_a_lone_surrogate() -> None:  # json.loads('"\\ud800"') makes one
    with pytest.raises(CanonicalError):
        canonical_json({"x": "\ud800"})


@given(st.binary(max_size=2000))
def test_keccak_is_eth_hashs(data: bytes) -> None:
    assert keccak(data) == eth_hash_keccak(data)
    assert keccak(b"").hex() == ("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


@pytest.mark.parametrize("bad", [{"x": 1.0}, {"x": float("nan")}, {1: "a"}, {"x": b"raw"}])
def test_canonical_refuses(bad: dict) -> None:
    with pytest.raises(CanonicalError):
        canonical_json(bad)
