"""The user-side SDK: what the CLI and the tests use to talk to a supernode."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from supernode.client_chain import ChainRPCError, rpc_call, send_payment
from supernode.client_errors import OrderPending, SupernodeAPIError
from supernode.client_keys import KeysMixin
from supernode.client_orders import ORDER_TTL_S, SPEND_PATH, OrderMixin, PendingOrders
from supernode.crypto.envelope import Envelope, sign_envelope
from supernode.crypto.keys import Identity

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY_S = 60.0  # how long a spend order is resent before the call gives up
SEQUENCE_TRIES = 3  # orders signed for one spend when this supernode's view is behind
SEQUENCE_WAIT_S = 10.0  # how long a refused order waits to see its sequence taken
STALE_REASONS = frozenset({"stale_sequence", "conflicting_order"})
__all__ = [
    "ChainRPCError",
    "OrderPending",
    "SupernodeAPIError",
    "SupernodeClient",
    "rpc_call",
    "send_payment",
]


class PurchaseMixin:
    """Credit packs, for SupernodeClient."""

    http: httpx.Client
    identity: Identity | None
    _call: Any
    sign: Any
    node: Any
    _post_envelope: Any

    def request_quote(self, credits: int, ttl_s: int = 600) -> dict[str, Any]:
        """Sign a purchase request and get a quote agreed by a quorum."""
        req = self.sign(
            "credit_purchase_request",
            {"credits": credits, "nonce": secrets.token_hex(16)},
            ttl_s=ttl_s,
        )
        return self._post_envelope("/credit_purchase_initial_request", req)

    def pay_quote(self, quote: dict[str, Any], rpc_url: str) -> str:
        if self.identity is None:
            raise ValueError("paying needs a user key")
        t = quote["terms"]
        return send_payment(
            rpc_url,
            self.identity,
            to=t["payment_address"],
            value_wei=t["amount_wei"],
            data=t["purchase_id"],
        )

    def confirm_purchase(
        self, purchase_id: str, tx_hash: str, quote: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"purchase_id": purchase_id, "tx_hash": tx_hash}
        if quote is not None:
            body["quote"] = quote
        return self._call("POST", "/confirm_credit_purchase_request", json=body)

    def purchase_status(self, purchase_id: str) -> dict[str, Any]:
        return self._call("GET", f"/check_status_of_credit_purchase_request/{purchase_id}")

    def pack_balance(self, pack_id: str) -> dict[str, Any]:
        return self._call("GET", f"/check_credit_pack_balance/{pack_id}")

    def packs(self, address: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/get_valid_credit_pack_tickets_for_address/{address}")["packs"]

    def pack_from_tx(self, tx_hash: str) -> dict[str, Any]:
        return self._call("GET", f"/get_credit_pack_ticket_from_txid/{tx_hash}")

    def spend_order(
        self,
        pack_id: str,
        amount: int,
        *,
        sequence: int | None = None,
        request_id: str | None = None,
        executor: str | None = None,
        ttl_s: int = ORDER_TTL_S,
        reserve: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A signed spend order (wire form) for this supernode to execute. With no
        ``sequence``: the pack's next, once the pack's pending orders are settled (never
        two orders for one sequence)."""
        if sequence is None:
            self.finish_pending(pack_id)
            sequence = self.pack_balance(pack_id)["next_sequence"]
        payload = {
            "pack_id": pack_id,
            "sequence": sequence,
            "amount": amount,
            "request_id": request_id or "0x" + secrets.token_hex(32),
            "executor": executor or self.node()["address"],
        }
        if reserve is not None:
            payload["reserve"] = reserve
        return self.sign("spend_order", payload, ttl_s=ttl_s).to_wire()

    def submit_spend(self, order: dict[str, Any]) -> dict[str, Any]:
        """One try at having this supernode certify a signed spend order (no retry, not
        kept: ``spend`` is the call that keeps and resends); returns the certificate."""
        return self._call("POST", SPEND_PATH, json=order)

    def spend(self, pack_id: str, amount: int, **kw: Any) -> dict[str, Any]:
        """Sign the pack's next order and have it certified, resending that same order
        through failures (see OrderMixin.submit_order); returns the certificate.

        This supernode's view of the pack may be behind (another supernode certified the
        owner's last order): the order is then refused for its sequence. Once this
        supernode shows that sequence certified for another order, ours can never pass,
        and a new order is signed for the next sequence (SEQUENCE_TRIES orders at most)."""
        for attempt in range(SEQUENCE_TRIES):
            order = self.spend_order(pack_id, amount, **kw)
            try:
                return self.submit_order(order, SPEND_PATH)
            except SupernodeAPIError as exc:
                reason = exc.body.get("reason") if isinstance(exc.body, dict) else None
                if "sequence" in kw or reason not in STALE_REASONS:
                    raise
                if attempt == SEQUENCE_TRIES - 1 or not self._taken(order):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _taken(self, order: dict[str, Any]) -> bool:
        """Whether this supernode shows ``order``'s sequence certified for another order
        (waiting up to SEQUENCE_WAIT_S for it to catch up)."""
        p = order["payload"]
        deadline = time.monotonic() + SEQUENCE_WAIT_S
        while time.monotonic() < deadline:
            certs = self.pack_spends(p["pack_id"], p["sequence"])
            if certs and certs[0]["order"]["payload"]["sequence"] == p["sequence"]:
                return certs[0]["order"]["id"] != order["id"]
            time.sleep(0.2)
        return False

    def pack_spends(self, pack_id: str, from_sequence: int = 0) -> list[dict[str, Any]]:
        return self._call(
            "GET", f"/get_credit_pack_spends/{pack_id}", params={"from_sequence": from_sequence}
        )["certificates"]

    def buy_credits(
        self, credits: int, rpc_url: str, *, progress: Any = None, wait_s: float = 120.0
    ) -> dict[str, Any]:
        """The whole purchase: quote → pay → confirm → wait until certified."""
        say = progress or (lambda _msg: None)
        quote = self.request_quote(credits)
        t = quote["terms"]
        say(
            f"quote {t['purchase_id']}: {credits} credits for {t['amount_wei']} wei, "
            f"agreed by {len(quote['agreements'])} members, payable until block "
            f"{t['expiry_block']}"
        )
        tx = self.pay_quote(quote, rpc_url)
        say(f"paid: transaction {tx}")
        deadline = time.time() + wait_s
        while True:
            try:
                result = self.confirm_purchase(t["purchase_id"], tx, quote)
            except SupernodeAPIError as exc:
                if exc.status != 503 or time.time() > deadline:
                    raise
                say(f"waiting for a quorum: {exc.body.get('detail', exc)}")
                time.sleep(2)
                continue
            if result["status"] == "certified":
                say("certified by a quorum")
                return result["pack"]
            say(f"pending: {result.get('detail', '')}")
            if time.time() > deadline:
                raise TimeoutError(f"purchase {t['purchase_id']} still pending")
            time.sleep(1)


class InferenceMixin:
    """Paid inference, for SupernodeClient."""

    http: httpx.Client
    identity: Identity | None
    _call: Any
    auth_headers: Any
    spend_order: Any
    sign: Any
    node: Any
    _post_envelope: Any

    def model_menu(self) -> list[dict[str, Any]]:
        return self._call("GET", "/get_inference_model_menu")["models"]

    def validate_usage(
        self, pack_id: str, model: str, prompt: str, params: dict[str, Any], max_cost: int
    ) -> dict[str, Any]:
        """The supernode's signed usage response (its payload has request_id and cost)."""
        req = self.sign(
            "inference_usage_request",
            {
                "pack_id": pack_id,
                "model": model,
                "input": prompt,
                "params": params,
                "max_cost": max_cost,
            },
        )
        return self._post_envelope("/validate_inference_api_usage_request", req)

    def confirm_usage(self, quote: dict[str, Any]) -> dict[str, Any]:
        """Sign the spend order for a quote and have the supernode certify and run it."""
        order = self.spend_order(
            quote["pack_id"],
            quote["cost"],
            request_id=quote["request_id"],
            executor=quote["executor"],
        )
        return self.submit_order(order, "/process_inference_confirmation")

    def request_status(self, request_id: str) -> dict[str, Any]:
        return self._call("GET", f"/check_status_of_inference_request_results/{request_id}")

    def retrieve_result(self, request_id: str) -> dict[str, Any]:
        return self._call(
            "POST",
            "/retrieve_inference_output_results",
            headers=self.auth_headers("/retrieve_inference_output_results"),
            json={"request_id": request_id},
        )

    def stream_output(self, request_id: str) -> Any:
        """Yield text chunks over SSE as the model makes them."""
        headers = self.auth_headers("/stream_inference_output")
        with self.http.stream(
            "GET", f"/stream_inference_output/{request_id}", headers=headers
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise SupernodeAPIError(resp.status_code, resp.json())
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if "text" in event:
                    yield event["text"]
                elif "error" in event:
                    raise SupernodeAPIError(503, {"detail": event["error"]})
                else:
                    return

    def infer(
        self,
        pack_id: str,
        model: str,
        prompt: str,
        *,
        max_new_tokens: int = 16,
        max_cost: int | None = None,
        stream: bool = False,
        wait_s: float = 120.0,
    ) -> Any:
        """The whole native flow: quote → signed order → certified → run → output."""
        quote = self.validate_usage(
            pack_id, model, prompt, {"max_new_tokens": max_new_tokens}, max_cost or 10**12
        )["payload"]
        self.confirm_usage(quote)
        if stream:
            return self.stream_output(quote["request_id"])
        deadline = time.time() + wait_s
        while time.time() < deadline:
            st = self.request_status(quote["request_id"])
            if st["status"] == "completed":
                return self.retrieve_result(quote["request_id"])
            if st["status"] == "failed":
                raise SupernodeAPIError(503, {"detail": st.get("error"), "status": st})
            time.sleep(0.1)
        raise TimeoutError(f"request {quote['request_id']} still {st['status']}")

    def rate(self, request_id: str, rating: int, comment: str = "") -> dict[str, Any]:
        """Rate a request this key paid for, 1 (bad) to 5 (good); one rating per request."""
        payload: dict[str, Any] = {"request_id": request_id, "rating": rating}
        if comment:
            payload["comment"] = comment
        return self._post_envelope(
            "/update_inference_sn_reputation_score", self.sign("request_rating", payload)
        )

    def reputation(self, epoch: int | None = None) -> dict[str, Any]:
        """The score table of the last closed epoch (or of ``epoch``) and its hash."""
        params = {"epoch": epoch} if epoch is not None else {}
        return self._call("GET", "/get_inference_sn_reputation_scores", params=params)


def rank_supernodes(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The members of a ``/supernode_list_json`` answer a client should use, best first:
    eligible, not banned, not marked invalid by the reputation table; by score (higher
    first; no score yet counts as 0), then address (so every client orders them alike)."""
    usable = [
        r
        for r in listing.get("supernodes", [])
        if r.get("eligible") and not r.get("banned_until") and not r.get("reputation_invalid")
    ]
    return sorted(usable, key=lambda r: (-(r.get("reputation_score") or 0), r["address"]))


def choose_supernode(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The URL of the best supernode by reputation, as the one at ``url`` lists them (it
    falls back to ``url`` itself when none qualifies)."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as http:
        resp = http.get("/supernode_list_json")
        if resp.status_code != 200:
            raise SupernodeAPIError(resp.status_code, resp.text)
        ranked = rank_supernodes(resp.json())
    return ranked[0]["url"] if ranked else url


class SupernodeClient(OrderMixin, PurchaseMixin, InferenceMixin, KeysMixin):
    """One supernode, as a user (``identity``) or its operator (``operator_token``).

    Spend orders go to ``base_url`` first and, while it cannot certify them, to
    ``fallback_urls`` (other members); each is resent as it is for up to ``retry_s``
    seconds, and kept (in ``orders_file`` if given) until certified or refused for good."""

    def __init__(
        self,
        base_url: str,
        *,
        identity: Identity | None = None,
        operator_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fallback_urls: list[str] | None = None,
        retry_s: float = DEFAULT_RETRY_S,
        orders_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.operator_token = operator_token
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._node: dict[str, Any] | None = None
        self.fallback_urls = [u.rstrip("/") for u in fallback_urls or []]
        self.retry_s = retry_s
        self.pending = PendingOrders(orders_file)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SupernodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise SupernodeAPIError(resp.status_code, body)
        return body

    def node(self) -> dict[str, Any]:
        """This supernode's address, network and chain (asked once per client)."""
        if self._node is None:
            self._node = self._call("GET", "/get_local_machine_sn_info")
        return self._node

    def sign(self, type_: str, payload: dict[str, Any], *, ttl_s: int = 600) -> Envelope:
        """An envelope signed with our key for this supernode's network and chain."""
        if self.identity is None:
            raise ValueError(f"{type_} must be signed: this call needs the user's key")
        info = self.node()
        return sign_envelope(
            self.identity,
            type_=type_,
            network_id=info["network_id"],
            chain_id=info["chain_id"],
            payload=payload,
            ttl_s=ttl_s,
        )

    def _post_envelope(self, path: str, env: Envelope) -> Any:
        return self._call(
            "POST",
            path,
            content=env.model_dump_json(),
            headers={"content-type": "application/json"},
        )

    def _operator(self) -> dict[str, str]:
        if not self.operator_token:
            raise ValueError("this call needs the operator token")
        return {"Authorization": f"Bearer {self.operator_token}"}

    def auth_headers(self, endpoint: str) -> dict[str, str]:
        """Answer a fresh single-use challenge for ``endpoint`` with our key."""
        if self.identity is None:
            raise ValueError("this call needs a user key")
        ch = self._call(
            "GET", f"/request_challenge/{self.identity.address}", params={"endpoint": endpoint}
        )
        return {
            "X-Auth-Address": self.identity.address,
            "X-Auth-Challenge-Id": ch["challenge_id"],
            "X-Auth-Signature": self.identity.sign_text(ch["text"]),
        }

    # -- reads --------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self._call("GET", "/get_local_machine_sn_info")

    def supernodes(self) -> dict[str, Any]:
        return self._call("GET", "/supernode_list_json")

    def messages(
        self, last_k_minutes: int = 60, message_type: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"last_k_minutes": last_k_minutes, "limit": limit}
        if message_type:
            params["message_type"] = message_type
        return self._call("GET", "/get_messages", params=params)["messages"]

    def message_metadata(self) -> dict[str, Any]:
        return self._call("GET", "/get_message_metadata")

    # -- operator -------------------------------------------------------------------------
    def broadcast_to_all(self, message_type: str, body: str, wait_s: float = 0) -> dict[str, Any]:
        return self._call(
            "POST",
            "/broadcast_message_to_all_sns",
            headers=self._operator(),
            json={"message_type": message_type, "message_body": body, "wait_s": wait_s},
        )

    def send_message(
        self, to: str, message_type: str, body: str, wait_s: float = 0
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/send_message",
            headers=self._operator(),
            json={
                "to_address": to,
                "message_type": message_type,
                "message_body": body,
                "wait_s": wait_s,
            },
        )

    def show_logs(self, minutes: float) -> list[str]:
        return self._call("GET", f"/show_logs/{minutes}", headers=self._operator())["lines"]

    # -- users ----------------------------------------------------------------------------
    def send_user_message(self, to: str, body: str) -> dict[str, Any]:
        return self._call(
            "POST",
            "/send_user_message",
            headers=self.auth_headers("/send_user_message"),
            json={"to_address": to, "message_body": body},
        )

    def user_messages(self, address: str | None = None) -> list[dict[str, Any]]:
        assert self.identity is not None or address is not None
        addr = address or self.identity.address  # type: ignore[union-attr]
        return self._call(
            "GET", f"/get_user_messages/{addr}", headers=self.auth_headers("/get_user_messages")
        )["messages"]
