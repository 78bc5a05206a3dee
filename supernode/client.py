"""The user-side SDK: what the CLI and the tests use to talk to a supernode."""

from __future__ import annotations

from typing import Any

import httpx

from supernode.crypto.keys import Identity

DEFAULT_TIMEOUT_S = 30.0


class SupernodeAPIError(Exception):
    """A supernode answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class SupernodeClient:
    """One supernode, as a user (``identity``) or its operator (``operator_token``)."""

    def __init__(
        self,
        base_url: str,
        *,
        identity: Identity | None = None,
        operator_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.operator_token = operator_token
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

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
