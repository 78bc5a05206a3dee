"""Reading untrusted JSON: bounded depth, exact integers within 2^256, valid Unicode only,
and the interpreter's recursion limit left where Python put it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supernode.crypto.wire_json import MAX_DEPTH, JSONBoundsError, loads


def nested(depth: int, kind: str = "[]") -> bytes:
    opener, closer = kind.encode()[:1], kind.encode()[1:]
    if kind == "{}":
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return opener * depth + closer * depth


@pytest.mark.parametrize("kind", ["[]", "{}"])
def test_deep_nesting_is_refused_even_with_a_huge_recursion_limit(kind: str) -> None:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # what py_ecc sets: the stdlib decoder would segfault
    try:
        with pytest.raises(JSONBoundsError, match="nested deeper"):
            loads(nested(100_000, kind))
    finally:
        sys.setrecursionlimit(before)


@pytest.mark.parametrize("kind", ["[]", "{}"])
def test_depth_limit_is_exact_and_names_the_place(kind: str) -> None:
    assert loads(nested(MAX_DEPTH, kind)) is not None
    with pytest.raises(JSONBoundsError, match=r"nested deeper than 32 levels at \$"):
        loads(nested(MAX_DEPTH + 1, kind))
    with pytest.raises(JSONBoundsError, match=r"at \$\.x\[1\]"):
        loads(b'{"x": [0, ' + nested(MAX_DEPTH) + b"]}", max_depth=MAX_DEPTH + 1)


def test_integers_are_exact_up_to_2_256_and_refused_beyond_naming_the_field() -> None:
    big = 2**255 + 12345
    assert loads(json.dumps({"wei": big, "neg": -(2**70)}).encode()) == {
        "wei": big,
        "neg": -(2**70),
    }
    assert loads(b"[-9223372036854775809]") == [-9223372036854775809]  # 19 digits, < -2^63
    with pytest.raises(JSONBoundsError, match=r"integer at \$\.a\[1\] is beyond 2\^256"):
        loads(json.dumps({"a": [1, 2**256]}).encode())
    with pytest.raises(JSONBoundsError, match="out of range"):
        loads(b'{"a": ' + b"9" * 5000 + b"}")


@pytest.mark.parametrize(
    "body",
    [
        b'"\\ud800"',  # a lone high surrogate
        b'"\\udc00x"',  # a lone low surrogate
        b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8
        b'"\xff"',  # not UTF-8 at all
        b"NaN",
        b"[Infinity]",
        b"1e999",
        b'{"a": 1} x',
        b'{"a": ',
        b"",
        b'"a\x00b"',  # a raw control character in a string
    ],
)
def test_what_json_does_not_allow_is_refused(body: bytes) -> None:
    with pytest.raises(JSONBoundsError):
        loads(body)


def test_escaped_nul_is_a_plain_character() -> None:
    assert loads(b'{"a": "x\\u0000y"}') == {"a": "x\x00y"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**255), max_value=2**255)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=30,
)


@given(json_values)
def test_reads_what_the_stdlib_reads(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert loads(text.encode()) == json.loads(text)


def test_the_package_puts_the_recursion_limit_back_after_py_ecc() -> None:
    code = (
        "import sys; before = sys.getrecursionlimit(); import supernode, eth_account, web3; "
        "import supernode.api.app; print(before, sys.getrecursionlimit())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.split()
    assert before == after == "1000"


tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\ax0,:') + ["\u00e9", "\n"]), max_size=8)
nested_values = st.recursive(
    st.none() | st.integers(min_value=-(2**70), max_value=2**70) | tricky_text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(tricky_text, c, max_size=3),
    max_leaves=40,
)


@given(nested_values, st.integers(min_value=1, max_value=8))
def test_the_fast_depth_check_equals_the_walk(value: object, limit: int) -> None:
    from supernode.crypto.wire_json import _deeper_than, _shape, too_deep

    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        shape = _shape(text.encode())
        assert _deeper_than(shape, limit) == (too_deep(value, limit) is not None), text


def test_strings_full_of_brackets_and_escapes_are_not_nesting() -> None:
    body = json.dumps({"a": "[[[[{{{{" * 50, "b": '\\"[[[[', "c": "\\\\", "d": [1]}).encode()
    assert loads(body, max_depth=3)["d"] == [1]
