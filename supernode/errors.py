"""One exception root for what the daemon refuses, and its HTTP status."""

from __future__ import annotations


class SupernodeError(Exception):
    """Root of the errors a caller can cause or be told about."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if reason else detail)
        self.detail = detail
        self.reason = reason  # a stable machine-readable code, where there is one


class BadRequest(SupernodeError):
    """The request is malformed or breaks a rule."""

    status, code = 400, "bad_request"


class Unauthorized(SupernodeError):
    """No valid proof of who is calling."""

    status, code = 401, "unauthorized"


class Forbidden(SupernodeError):
    """The caller is known but may not do this (not the operator, banned, not a member)."""

    status, code = 403, "forbidden"


class NotFound(SupernodeError):
    """No such record."""

    status, code = 404, "not_found"


class Conflict(SupernodeError):
    """Not now: the state does not allow it yet (e.g. too few confirmations)."""

    status, code = 409, "conflict"


class Refused(SupernodeError):
    """Well-formed, but a rule says no; ``reason`` names the rule."""

    status, code = 422, "refused"


class PayloadTooLarge(SupernodeError):
    """The body is over the configured limit."""

    status, code = 413, "payload_too_large"


class Unavailable(SupernodeError):
    """The daemon cannot serve this right now (starting, stopping, dependency down)."""

    status, code = 503, "unavailable"


class TooManyRequests(SupernodeError):
    """This client sent more of these requests than its share; ``retry_after_s`` says
    when it may try again."""

    status, code = 429, "too_many_requests"

    def __init__(self, detail: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.retry_after_s = retry_after_s
