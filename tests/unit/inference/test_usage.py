"""A usage request's shape and parameters: checked at the edge, each refusal with its
reason (the menu's limits, strict types: no float, no bool for an integer)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from supernode.errors import BadRequest, Refused
from supernode.inference.menu import ModelEntry
from supernode.inference.usage import UsageRequestPayload, parse_params

ENTRY = ModelEntry("tiny", 1, 2, max_new_tokens=64, max_input_tokens=512)
GOOD = {"pack_id": "0x" + "ab" * 32, "model": "tiny", "input": "hi", "params": {}, "max_cost": 9}


def test_params_within_the_menus_limits_pass() -> None:
    p = parse_params({"max_new_tokens": 64, "do_sample": True, "temperature": 700}, ENTRY)
    assert (p.max_new_tokens, p.do_sample, p.temperature) == (64, True, 0.7)
    assert ENTRY.cost(10, p.max_new_tokens) == 10 * 1 + 64 * 2
    p = parse_params({"max_new_tokens": 8, "seed": 3, "stop": ["\n", "END"]}, ENTRY)
    assert (p.seed, p.stop) == (3, ("\n", "END"))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, BadRequest),  # max_new_tokens is required
        ({"max_new_tokens": 65}, Refused),  # over the model's limit
        ({"max_new_tokens": 0}, Refused),
        ({"max_new_tokens": True}, Refused),  # a bool is not an integer
        ({"max_new_tokens": 8, "temperature": 0.7}, Refused),  # floats travel as thousandths
        ({"max_new_tokens": 8, "do_sample": 1}, BadRequest),
        ({"max_new_tokens": 8, "beam_width": 1}, BadRequest),  # not a parameter of ours
        ({"max_new_tokens": 8, "seed": -1}, Refused),
        ({"max_new_tokens": 8, "stop": "x"}, Refused),  # a list
        ({"max_new_tokens": 8, "stop": ["a", "b", "c", "d", "e"]}, Refused),
        ({"max_new_tokens": 8, "stop": ["x" * 101]}, Refused),
        ("max_new_tokens=8", BadRequest),
    ],
)
def test_params_out_of_bounds_are_refused(params: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_params(params, ENTRY)


def test_the_payload_is_strict() -> None:
    assert UsageRequestPayload.model_validate(GOOD).max_cost == 9
    for bad in (
        {**GOOD, "max_cost": "9"},  # no coercion
        {**GOOD, "max_cost": 2**63},  # beyond what the ledger stores
        {**GOOD, "input": "   "},  # nothing to run
        {**GOOD, "pack_id": "0x" + "AB" * 32},  # ids are lower-case hex
        {**GOOD, "extra": 1},
    ):
        with pytest.raises(ValidationError):
            UsageRequestPayload.model_validate(bad)
