"""An API key's sliding windows: requests and tokens a minute, requests in flight; the
time to wait is when enough of the window has passed, and a settled request counts what
it used."""

from __future__ import annotations

import pytest

from supernode.inference.key_limits import KeyLimiter, KeyLimits, duration
from supernode.inference.openai_fields import OpenAIError


def refused(lim: KeyLimiter, limits: KeyLimits, tokens: int, now: float) -> OpenAIError:
    with pytest.raises(OpenAIError) as err:
        lim.admit("k", limits, tokens, now)
    return err.value


def test_requests_a_minute_slide() -> None:
    lim, limits = KeyLimiter(), KeyLimits(rpm=2)
    a, h = lim.admit("k", limits, 0, now=0.0)
    assert h["x-ratelimit-remaining-requests"] == "1" and h["x-ratelimit-reset-requests"] == "1m0s"
    a.release()
    lim.admit("k", limits, 0, now=10.0)[0].release()
    e = refused(lim, limits, 0, 30.0)
    assert e.status == 429 and e.headers["retry-after"] == "30"  # the one at 0 leaves at 60
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    lim.admit("k", limits, 0, now=60.5)[0].release()  # it left
    assert refused(lim, limits, 0, 65.0).headers["retry-after"] == "5"  # 10 leaves at 70
    assert lim.admit("other", limits, 0, now=65.0)  # keys are apart


def test_tokens_reserved_then_settled() -> None:
    lim, limits = KeyLimiter(), KeyLimits(tpm=100)
    a, h = lim.admit("k", limits, 60, now=0.0)
    assert h["x-ratelimit-remaining-tokens"] == "40"
    e = refused(lim, limits, 50, 1.0)
    assert e.status == 429 and e.headers["retry-after"] == "59"
    a.settle(20)  # it used less than it reserved
    a.release()
    b, h = lim.admit("k", limits, 50, now=2.0)
    assert h["x-ratelimit-remaining-tokens"] == "30"
    b.settle(50)
    b.release()
    assert refused(lim, limits, 101, 3.0).status == 400  # alone over the limit
    # once the first leaves the window, settling it later changes nothing
    lim.admit("k", limits, 0, now=61.0)
    a.settle(1000)
    _, h = lim.admit("k", limits, 0, now=61.5)
    assert h["x-ratelimit-remaining-tokens"] == "50"


def test_in_flight_and_release_once() -> None:
    lim, limits = KeyLimiter(), KeyLimits(max_in_flight=2)
    a, _ = lim.admit("k", limits, 0, now=0.0)
    b, _ = lim.admit("k", limits, 0, now=0.0)
    assert refused(lim, limits, 0, 0.1).headers["retry-after"] == "1"
    a.release()
    a.release()  # twice is once
    c, _ = lim.admit("k", limits, 0, now=0.2)
    assert refused(lim, limits, 0, 0.3).status == 429
    b.release()
    c.release()


def test_memory_is_bounded_but_running_keys_are_kept() -> None:
    lim = KeyLimiter(max_keys=3)
    held, _ = lim.admit("busy", KeyLimits(max_in_flight=1), 0, now=0.0)
    for i in range(10):
        lim.admit(f"k{i}", KeyLimits(rpm=5), 0, now=float(i))[0].release()
    assert len(lim) == 3
    with pytest.raises(OpenAIError):  # still counted: its request runs
        lim.admit("busy", KeyLimits(max_in_flight=1), 0, now=11.0)
    held.release()


def test_reset_format() -> None:
    got = [duration(x) for x in (0.25, 1.0, 59.2, 60.0, 90.0)]
    assert got == ["250ms", "1s", "1m0s", "1m0s", "1m30s"]
