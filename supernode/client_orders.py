"""Spend orders a client signed and has not yet seen certified.

A user must never sign two different orders for one (pack, sequence): the voters would
split between them and the sequence, and with it the pack, could stay locked for good. So
the SDK keeps every order it signs until it is certified or refused for good, and a retry
resends that same order (a plain spend to any supernode, an inference order to its
executor). Only once an order can no longer be certified anywhere (refused for good, or
expired with no member holding a vote for it: ``order_expired``) is a new order signed for
its sequence. With a file, the orders outlive the process (the CLI keeps them in
``~/.supernode/pending-orders.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from supernode.client_errors import OrderPending, SupernodeAPIError

# Answers after which the same order may still be certified: the federation (or this
# supernode) cannot do it now. Every other refusal is for good.
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# the supernode is behind (it has not yet applied the pack's last certificate, or seen the
# pack): it catches up by itself
RETRY_REASONS = frozenset({"sequence_ahead", "unknown_pack"})
ORDER_TTL_S = 24 * 3600  # lifetime of a signed order: longer than an outage worth waiting out
SPEND_PATH = "/spend_credits"
RETRY_FIRST_S = 0.5  # first pause between two sends of one order; doubles each time
RETRY_MAX_S = 8.0  # longest pause between two sends


def retryable(status: int, body: Any) -> bool:
    reason = body.get("reason") if isinstance(body, dict) else None
    return status in RETRY_STATUSES or reason in RETRY_REASONS


def default_orders_file() -> Path:
    return Path(
        os.environ.get("SUPERNODE_ORDERS_FILE", Path.home() / ".supernode" / "pending-orders.json")
    )


class PendingOrders:
    """Orders not certified yet, by order id: the order, where it goes (path), and the
    supernode it was first sent to."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._orders: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._orders = json.loads(path.read_text())

    def add(self, order: dict[str, Any], path: str, supernode: str) -> None:
        self._orders[order["id"]] = {"order": order, "path": path, "supernode": supernode}
        self._save()

    def for_id(self, order_id: str) -> dict[str, Any]:
        return self._orders[order_id]

    def drop(self, order_id: str) -> None:
        if self._orders.pop(order_id, None) is not None:
            self._save()

    def for_pack(self, pack_id: str) -> list[dict[str, Any]]:
        """The pack's pending orders, oldest sequence first."""
        mine = [e for e in self._orders.values() if e["order"]["payload"]["pack_id"] == pack_id]
        return sorted(mine, key=lambda e: e["order"]["payload"]["sequence"])

    def all(self) -> list[dict[str, Any]]:
        return list(self._orders.values())

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".orders-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._orders, f)
        os.replace(tmp, self.path)  # whole or not at all, even if the process dies here


class OrderMixin:
    """Signed spend orders: kept until certified or refused for good, resent as they are
    (see supernode.client_orders)."""

    http: httpx.Client
    base_url: str
    fallback_urls: list[str]
    pending: PendingOrders
    retry_s: float

    def submit_order(self, order: dict[str, Any], path: str = SPEND_PATH) -> dict[str, Any]:
        """Certify ``order`` (a plain spend at any supernode, an inference order at its
        executor), resending the same order through failures for up to ``retry_s``;
        OrderPending if it is still not certified (it stays pending)."""
        self.pending.add(order, path, self.base_url)
        return self._resend(self.pending.for_id(order["id"]))

    def _resend(self, entry: dict[str, Any]) -> dict[str, Any]:
        order, path = entry["order"], entry["path"]
        urls = [entry["supernode"]]
        if path == SPEND_PATH:  # any member may gather the votes for a plain spend
            urls += [u for u in [self.base_url, *self.fallback_urls] if u not in urls]
        deadline = time.monotonic() + self.retry_s
        delay, tries = RETRY_FIRST_S, 0
        while True:
            url = urls[tries % len(urls)]
            tries += 1
            try:
                resp = self.http.post(url + path, json=order)
            except httpx.TransportError as exc:
                last: Exception = exc
            else:
                body = _json_or_text(resp)
                if resp.status_code < 400:
                    self.pending.drop(order["id"])
                    return body
                last = SupernodeAPIError(resp.status_code, body)
                if not retryable(resp.status_code, body):
                    self.pending.drop(order["id"])  # refused for good: it can never pass
                    raise last
            if time.monotonic() + delay > deadline:
                raise OrderPending(order, last)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def finish_pending(self, pack_id: str) -> None:
        """Resend the pack's pending orders, oldest first. Raises OrderPending while one
        can still be certified but is not yet (then no new order may be signed)."""
        for entry in self.pending.for_pack(pack_id):
            try:
                self._resend(entry)
            except OrderPending:
                raise
            except SupernodeAPIError:
                pass  # refused for good (dropped): its sequence is free for a new order

    def resend_pending(self) -> list[dict[str, Any]]:
        """Resend every pending order; what became of each."""
        out = []
        for entry in self.pending.all():
            oid = entry["order"]["id"]
            try:
                self._resend(entry)
                out.append({"order_id": oid, "status": "certified"})
            except OrderPending as exc:
                out.append({"order_id": oid, "status": "pending", "detail": str(exc)})
            except SupernodeAPIError as exc:
                out.append({"order_id": oid, "status": "refused", "detail": str(exc)})
        return out


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text
