"""Reading JSON that came over the wire, with bounds checked before Python ever recurses.

Every request body and every peer's answer goes through ``loads``. The standard library's
decoder recurses in C once per nesting level and trusts the interpreter's recursion limit
to stop it; a dependency that raises that limit (py_ecc sets 100,000 at import) lets a
200 KB body of ``[`` overflow the C stack and kill the process. So:

1. orjson reads the bytes first. It is written in Rust, refuses more than 1,024 levels on
   its own, and refuses in one linear pass what JSON does not allow: invalid UTF-8, lone
   surrogates (``"\\ud800"``), NaN and Infinity, control characters, trailing garbage.
2. The nesting depth is checked against ``max_depth`` on the document's shape (its bytes
   without the strings, brackets only: a few C-speed passes, no Python loop per value).
3. Integers: orjson reads integers past 64 bits as floats, so a body with an integer of
   19 or more digits is read again by the standard library (now known to be shallow), with
   integer literals limited to ``MAX_INT_DIGITS`` digits and values below 2^256 (a wei
   amount fits; anything larger is refused, naming where it is).

Errors are ``JSONBoundsError`` with a reason a client can act on.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from supernode.errors import JSONBoundsError

MAX_DEPTH = 32  # levels of arrays and objects in one document (a setting may lower it)
MAX_INT = 1 << 256  # no integer of ours is larger (wei amounts are below 2^256)
MAX_INT_DIGITS = 78  # digits of 2^256


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a JSON document from an untrusted source, or JSONBoundsError."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JSONBoundsError("not valid Unicode (a lone surrogate)") from exc
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise JSONBoundsError(f"nested deeper than {max_depth} levels") from None
        if str(exc).startswith("number is infinity"):
            raise JSONBoundsError(f"a number out of range: {exc}") from None
        raise JSONBoundsError(f"not valid JSON: {exc}") from exc
    shape = _shape(data)
    if _deeper_than(shape, max_depth):
        where = too_deep(value, max_depth)
        raise JSONBoundsError(f"nested deeper than {max_depth} levels at {where}")
    return _exact(data) if _LONG_INT in shape else value


def too_deep(value: Any, max_depth: int) -> str | None:
    """The path of the first container nested deeper than ``max_depth``, or None."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            return path
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1, f"{path}.{key}"))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1, f"{path}[{i}]"))
    return None


# What is left of a valid document once its strings are gone, mapped to one byte class:
# digits to "0", brackets to "[" and "]", the rest to " " (which keeps numbers apart).
_SHAPE = bytes(
    ord("0")
    if chr(c).isdigit() and c < 128
    else ord("[")
    if c in b"[{"
    else ord("]")
    if c in b"]}"
    else ord(" ")
    for c in range(256)
)
_LONG_INT = b"0" * 19  # 19 digits in a row: an integer orjson may have read as a float


def _shape(data: bytes) -> bytes:
    """``data`` (valid JSON) without its strings, mapped by _SHAPE: C-speed passes only."""
    if b"\\" in data:  # escapes first: an escaped quote does not end a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(data.split(b'"')[::2]).translate(_SHAPE)


def _deeper_than(shape: bytes, max_depth: int) -> bool:
    """Whether the brackets in ``shape`` nest deeper than ``max_depth``: each pass takes
    out the innermost pairs."""
    brackets = shape.translate(None, b"0 ")
    if len(brackets) <= 2 * max_depth:
        return False  # too few brackets to nest that deep
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def _int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise JSONBoundsError(f"an integer of {digits} digits (the largest allowed is 2^256)")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONBoundsError(f"a number out of range: {text[:40]}")
    return value


def _exact(data: bytes) -> Any:
    """The standard library's reading (exact integers), for a document orjson already
    proved valid and shallow."""
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float)
    except (ValueError, RecursionError) as exc:
        raise JSONBoundsError(f"not valid JSON: {exc}") from exc
    where = _big_int(value)
    if where is not None:
        raise JSONBoundsError(f"integer at {where} is beyond 2^256")
    return value


def _big_int(value: Any) -> str | None:
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            stack.extend((child, f"{path}.{key}") for key, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
        elif isinstance(node, int) and not -MAX_INT < node < MAX_INT:
            return path
    return None
