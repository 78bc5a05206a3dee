"""Every error of the package, under one root, and what each means.

::

    SupernodeError .................. 500  something failed that should not have
    ├── RequestError ................     the caller sent something wrong (4xx)
    │   ├── BadRequest .............. 400  malformed, or breaks a rule of shape
    │   │   ├── JSONBoundsError ..... 400  not JSON within bounds (depth, size, Unicode)
    │   │   ├── CanonicalError ...... 400  no canonical JSON (a float, a surrogate, ...)
    │   │   └── NodeRejected ........ 400  an inference node refused the parameters
    │   ├── Unauthorized ............ 401  no valid proof of who is calling
    │   │   └── ChallengeError ...... 401  the challenge answer does not hold
    │   ├── Forbidden ............... 403  known, but may not do this
    │   ├── NotFound ................ 404  no such record
    │   ├── Conflict ................ 409  not now: the state does not allow it yet
    │   ├── PayloadTooLarge ......... 413  the body is over the limit
    │   ├── UnsupportedMediaType .... 415  a body in an encoding the API does not read
    │   ├── Refused ................. 422  well formed, but a rule says no (``reason``)
    │   │   ├── EnvelopeError ....... 422  a signed envelope failed a check
    │   │   └── CertificateError .... 422  attestations do not certify their subject
    │   └── TooManyRequests ......... 429  over this client's share (``retry_after_s``)
    ├── Unavailable ................. 503  a dependency or the quorum is missing now
    │   ├── PeerError ............... 503  a peer gave no usable answer
    │   │   └── PeerUnreachable ..... 503  no answer at all (refused, dropped, timeout)
    │   ├── ChainError .............. 503  the chain could not be read
    │   ├── NodeUnavailable ......... 503  no inference node could run it (``reason``)
    │   ├── NodeFailure ............. 503  a node gave no usable answer (its breaker counts)
    │   └── WriterStopped ........... 503  the daemon is stopping; the write was not made
    ├── GenerationTimeout ........... 504  a generation ran past its deadline
    ├── GenerationCancelled ......... 499  the caller went away; the job was dropped
    └── SetupError ..................      the daemon cannot start (the CLI says why)
        ├── ConfigError                    a setting is missing or unsafe
        ├── KeystoreError                  a key file or passphrase problem
        └── StartupError                   the node cannot start (not a member, wrong chain)

``TABLE`` holds, per class, its HTTP status and the verdict a peer gets for handing it
over (gossipsub v1.1: ``reject`` penalises the peer, ``ignore`` does not). A class not in
the table takes its nearest ancestor's entry. An ``EnvelopeError`` carries its own verdict
(``penalise``): a duplicate or an expired envelope is ignored, a forged one rejected.
Errors a caller can cause also carry ``detail`` (for people) and ``reason`` (a stable
code, for programs). Some also subclass ``ValueError``, as the code that catches them
expects.
"""

from __future__ import annotations

REJECT, IGNORE = "reject", "ignore"


class SupernodeError(Exception):
    """The root of every error the package raises."""

    code = "internal_error"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if reason and detail else detail or reason or "")
        self.detail = detail
        self.reason = reason  # a stable machine-readable code, where there is one

    @property
    def status(self) -> int:
        return _entry(type(self))[0]

    @property
    def verdict(self) -> str:
        """What a peer that handed this over gets (REJECT: penalised; IGNORE: not)."""
        return _entry(type(self))[1]


class RequestError(SupernodeError):
    """The caller sent something wrong."""


class BadRequest(RequestError):
    """The request is malformed or breaks a rule of shape."""

    code = "bad_request"


class JSONBoundsError(BadRequest, ValueError):
    """The bytes are not JSON within bounds; the message says what and where."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="bad_json")


class CanonicalError(BadRequest, ValueError):
    """The value has no canonical JSON form (a float, a non-string key, too deep...)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="bad_payload")


class Unauthorized(RequestError):
    """No valid proof of who is calling."""

    code = "unauthorized"


class ChallengeError(Unauthorized, ValueError):
    """The challenge answer does not hold; the message says why."""


class Forbidden(RequestError):
    """The caller is known but may not do this (not the operator, banned, not a member)."""

    code = "forbidden"


class NotFound(RequestError):
    """No such record."""

    code = "not_found"


class Conflict(RequestError):
    """Not now: the state does not allow it yet (e.g. too few confirmations)."""

    code = "conflict"


class PayloadTooLarge(RequestError):
    """The body is over the configured limit."""

    code = "payload_too_large"


class Refused(RequestError):
    """Well-formed, but a rule says no; ``reason`` names the rule."""

    code = "refused"


class EnvelopeError(Refused, ValueError):
    """A signed envelope failed a check. ``reason`` is a stable code; ``penalise`` says
    whether the peer that handed it over deserves a penalty (reject) or not (ignore)."""

    def __init__(self, reason: str, detail: str = "", *, penalise: bool = True) -> None:
        super().__init__(detail, reason=reason)
        self.penalise = penalise

    @property
    def verdict(self) -> str:
        return REJECT if self.penalise else IGNORE


class CertificateError(Refused, ValueError):
    """A set of attestations does not certify its subject; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail, reason=reason)


class TooManyRequests(RequestError):
    """This client sent more of these requests than its share; ``retry_after_s`` says
    when it may try again."""

    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.retry_after_s = retry_after_s


class NodeRejected(BadRequest):
    """An inference node refused the request's parameters (e.g. max_new_tokens over its
    limit)."""

    def __init__(self, detail: str, *, reason: str | None = None, node_url: str = "") -> None:
        super().__init__(detail, reason=reason or "node_rejected")
        self.node_url = node_url


class UnsupportedMediaType(RequestError):
    """The body is in an encoding this API does not read."""

    code = "unsupported_media_type"


class Unavailable(SupernodeError):
    """The daemon cannot serve this right now (starting, stopping, dependency down)."""

    code = "unavailable"


class PeerError(Unavailable):
    """A peer did not give a usable answer."""


class PeerUnreachable(PeerError):
    """No HTTP answer: connection refused or dropped, or the timeout passed."""


class ChainError(Unavailable):
    """The chain could not be read (timeout, connection refused, RPC error)."""


class NodeUnavailable(Unavailable):
    """No healthy node serves the model, or every try failed; the message names nodes
    and why. ``reason``: ``no_node`` (none could take it), ``all_tries_failed``,
    ``stream_broken``."""


class NodeFailure(Unavailable):
    """An inference node did not give a usable answer; it counts toward its breaker."""


class GenerationTimeout(SupernodeError):
    """A generation (or a session's wait for its client) ran past its deadline."""

    code = "timeout"


class GenerationCancelled(SupernodeError):
    """The caller went away; the worker dropped the job."""


class WriterStopped(Unavailable):
    """The daemon is stopping; the write was not made."""


class SetupError(SupernodeError):
    """The daemon cannot start; the message says what to change."""


class ConfigError(SetupError, ValueError):
    """A setting is missing or unsafe; the message says which and why."""


class KeystoreError(SetupError):
    """A keystore or passphrase cannot be used; the message says why."""


class StartupError(SetupError):
    """The node cannot start (not a member, wrong chain...); the message says why."""


# class -> (HTTP status, verdict for the peer that handed it over)
TABLE: dict[type[SupernodeError], tuple[int, str]] = {
    SupernodeError: (500, IGNORE),  # our failure, not the peer's
    RequestError: (400, REJECT),
    BadRequest: (400, REJECT),
    Unauthorized: (401, REJECT),
    Forbidden: (403, REJECT),
    NotFound: (404, IGNORE),  # not known here yet: it may come by gossip
    Conflict: (409, IGNORE),  # not yet: it may pass later
    PayloadTooLarge: (413, REJECT),
    UnsupportedMediaType: (415, REJECT),
    Refused: (422, REJECT),
    TooManyRequests: (429, IGNORE),
    Unavailable: (503, IGNORE),  # it cannot be checked now
    GenerationTimeout: (504, IGNORE),
    GenerationCancelled: (499, IGNORE),  # nobody reads the answer
}


def _entry(cls: type[SupernodeError]) -> tuple[int, str]:
    for klass in cls.__mro__:
        if klass in TABLE:
            return TABLE[klass]  # type: ignore[index]
    return TABLE[SupernodeError]
