"""Quorum arithmetic: q = floor(2n/3) + 1 of n, tolerating f = floor((n-1)/3)."""

from __future__ import annotations

import pytest

from supernode.federation.membership import max_faulty, quorum


@pytest.mark.parametrize(
    "n,q,f", [(1, 1, 0), (3, 3, 0), (4, 3, 1), (5, 4, 1), (7, 5, 2), (10, 7, 3), (16, 11, 5)]
)
def test_quorum(n: int, q: int, f: int) -> None:
    assert quorum(n) == q
    assert max_faulty(n) == f
    # two quorums always share an honest member
    assert 2 * q - n >= f + 1


def test_quorum_of_nobody_is_an_error() -> None:
    with pytest.raises(ValueError):
        quorum(0)
