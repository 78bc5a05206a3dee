"""An API key's rate limits, enforced by its delegate (the only supernode that can spend
under it, so its count is the whole count): requests and tokens per minute over a sliding
window, and requests in flight.

A sliding-window log per key: the times of the requests admitted in the last minute, and
of their tokens (a request reserves its prompt and ``max_tokens`` when admitted, and is
settled to the tokens it really used when it ends). Admission is one synchronous step on
the event loop, so two requests can never both take the last slot. State is kept for
``max_keys`` keys at most (least recently used forgotten first) and for one minute of
history per key: bounded memory, and no cost that grows with a key's age. A restart
forgets the windows (a key gets at most one extra minute's allowance).

Answers carry OpenAI's headers, ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
(reset as ``1s``, ``6m0s``...), for the limits the key sets.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from supernode.inference.openai_fields import OpenAIError

WINDOW_S = 60.0
MAX_KEYS = 100_000


@dataclass(frozen=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_in_flight is not None


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)  # admission times
    # [time, tokens, in the window]: settled in place while it is in the window
    tokens: deque[list[float]] = field(default_factory=deque)
    token_sum: float = 0.0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            gone = self.tokens.popleft()
            self.token_sum -= gone[1]
            gone[2] = 0.0


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``1m30s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class Admission:
    """One admitted request: ``settle`` its real token count, ``release`` when it ends
    (both idempotent; release also settles an unsettled request at what it reserved)."""

    def __init__(self, window: _Window, entry: list[float] | None) -> None:
        self._w, self._entry, self._done = window, entry, False

    def settle(self, tokens: int) -> None:
        if self._entry is not None and self._entry[2]:
            self._w.token_sum += tokens - self._entry[1]
            self._entry[1] = tokens

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._w.in_flight -= 1


class KeyLimiter:
    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _window(self, key_id: str, now: float) -> _Window:
        w = self._keys.pop(key_id, None) or _Window()
        self._keys[key_id] = w  # most recently used last
        passed = 0
        while len(self._keys) > self.max_keys and passed < len(self._keys):
            old_id, old = next(iter(self._keys.items()))
            if old.in_flight:  # never forget a key with requests running: skip it
                self._keys.move_to_end(old_id)
                passed += 1
                continue
            self._keys.pop(old_id)
        w.expire(now)
        return w

    def admit(
        self, key_id: str, limits: KeyLimits, tokens: int, now: float | None = None
    ) -> tuple[Admission, dict[str, str]]:
        """Take one request of ``tokens`` (prompt + max_tokens) under ``limits``: the
        admission and the headers to answer with; OpenAIError 429 (with Retry-After and
        the headers) when a limit is reached, 400 when ``tokens`` alone exceed ``tpm``."""
        t = time.monotonic() if now is None else now
        w = self._window(key_id, t)
        if limits.tpm is not None and tokens > limits.tpm:
            raise OpenAIError(
                400,
                f"this request may use {tokens} tokens (prompt and max_tokens); the key allows "
                f"{limits.tpm} a minute: lower max_tokens or shorten the prompt",
                code="tokens_over_limit",
                param="max_tokens",
            )
        wait, what = 0.0, ""
        if limits.rpm is not None and len(w.requests) >= limits.rpm:
            wait = w.requests[-limits.rpm] + WINDOW_S - t
            what = f"{limits.rpm} requests a minute"
        if limits.tpm is not None and w.token_sum + tokens > limits.tpm:
            excess, at = w.token_sum + tokens - limits.tpm, t
            for when, n, _ in w.tokens:  # the time enough of them leave the window
                excess -= n
                at = when
                if excess <= 0:
                    break
            if at + WINDOW_S - t > wait:
                wait, what = at + WINDOW_S - t, f"{limits.tpm} tokens a minute"
        if limits.max_in_flight is not None and w.in_flight >= limits.max_in_flight:
            if not wait:
                wait, what = 1.0, f"{limits.max_in_flight} requests at once"
        if what:
            headers = self._headers(w, limits, t)
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            raise OpenAIError(
                429,
                f"Rate limit reached for this key: {what}; try again in {duration(wait)}",
                code="rate_limit_exceeded",
                headers=headers,
            )
        w.requests.append(t)
        entry = None
        if limits.tpm is not None:
            entry = [t, float(tokens), 1.0]
            w.tokens.append(entry)
            w.token_sum += tokens
        w.in_flight += 1
        return Admission(w, entry), self._headers(w, limits, t)

    @staticmethod
    def _headers(w: _Window, limits: KeyLimits, t: float) -> dict[str, str]:
        h: dict[str, str] = {}
        if limits.rpm is not None:
            h["x-ratelimit-limit-requests"] = str(limits.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - len(w.requests)))
            reset = w.requests[0] + WINDOW_S - t if w.requests else 0.0
            h["x-ratelimit-reset-requests"] = duration(reset)
        if limits.tpm is not None:
            h["x-ratelimit-limit-tokens"] = str(limits.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, int(limits.tpm - w.token_sum)))
            reset = w.tokens[0][0] + WINDOW_S - t if w.tokens else 0.0
            h["x-ratelimit-reset-tokens"] = duration(reset)
        return h
