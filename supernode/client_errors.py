"""What the SDK raises when a supernode says no."""

from __future__ import annotations

from typing import Any


class SupernodeAPIError(Exception):
    """A supernode answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class OrderPending(SupernodeAPIError):
    """A signed spend order could not be certified yet (the federation did not answer, or
    not a quorum of it); it is kept and resent as it is by the next call that spends
    from its pack (or by ``resend_pending``)."""

    def __init__(self, order: dict[str, Any], last: Exception) -> None:
        status = last.status if isinstance(last, SupernodeAPIError) else 503
        body = {
            "detail": f"order {order['id']} kept, to be resent as it is: {last}",
            "reason": "order_pending",
        }
        super().__init__(status, body)
        self.order = order
