"""API keys (delegations): ``KeysMixin`` makes, revokes and reports on them for
``SupernodeClient``; ``KeyBook`` remembers those a user made with the CLI on the user's disk,
so that `supernode client keys list / usage / revoke` can find them by id
(``~/.supernode/keys.json``, or ``$SUPERNODE_KEYS_FILE``; written atomically, readable by its
owner only)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from supernode.client_errors import SupernodeAPIError
from supernode.crypto.keys import Identity

RESERVATION_WAIT_S = 30.0  # how long a new key waits for its supernode to hold its reservation


def default_keys_file() -> Path:
    return Path(os.environ.get("SUPERNODE_KEYS_FILE", Path.home() / ".supernode" / "keys.json"))


class KeyBook:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = json.loads(self.path.read_text())
        return data if isinstance(data, list) else []

    def find(self, key_id: str) -> dict[str, Any] | None:
        return next((k for k in self.all() if k.get("key_id") == key_id.lower()), None)

    def save(self, entry: dict[str, Any]) -> None:
        keys = [k for k in self.all() if k.get("key_id") != entry["key_id"]] + [entry]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


class KeysMixin:
    """API keys, for SupernodeClient."""

    identity: Identity | None
    operator_token: str | None
    _call: Any
    _operator: Any
    _post_envelope: Any
    auth_headers: Any
    node: Any
    pack_balance: Any
    sign: Any
    spend: Any

    def delegate(
        self,
        pack_id: str,
        max_credits: int,
        expires_in_s: int,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_in_flight: int | None = None,
        models: list[str] | None = None,
    ) -> str:
        """An OpenAI API key: this supernode may spend up to ``max_credits`` of the pack
        for ``expires_in_s`` seconds (signed with the owner's key); optionally at most
        ``rpm`` requests and ``tpm`` tokens a minute, ``max_in_flight`` at once, and only
        ``models``. The ``max_credits`` are reserved for the key in the pack's sequence
        (an order certified like a spend) before the key is returned; what the key does
        not spend goes back to the pack when it expires or is revoked."""
        from supernode.credits.orders import reservation_id
        from supernode.inference.openai import encode_api_key

        delegate = self.node()["address"]
        payload: dict[str, Any] = {
            "pack_id": pack_id,
            "delegate": delegate,
            "max_credits": max_credits,
        }
        extra = {"rpm": rpm, "tpm": tpm, "max_in_flight": max_in_flight, "models": models}
        payload.update({k: v for k, v in extra.items() if v is not None})
        d = self.sign("spend_delegation", payload, ttl_s=expires_in_s)
        self.spend(pack_id, max_credits, request_id=d.id, executor=delegate, reserve=d.to_wire())
        reserved = reservation_id(pack_id, d.id)
        deadline = time.monotonic() + RESERVATION_WAIT_S
        while True:  # this supernode applies the reservation (at once, or by gossip)
            try:
                self.pack_balance(reserved)
                break
            except SupernodeAPIError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        return encode_api_key(d.to_wire())

    def revoke_key(self, key: str) -> dict[str, Any]:
        """Revoke an API key (signed with the owner's key): every member refuses it as
        soon as the revocation reaches it."""
        from supernode.inference.openai import decode_api_key

        d = decode_api_key(key)
        if not isinstance(d, dict) or not isinstance(d.get("payload"), dict):
            raise ValueError("that is not a supernode API key")
        rev = self.sign(
            "delegation_revocation",
            {"pack_id": d["payload"]["pack_id"], "delegation_id": d["id"]},
        )
        return self._post_envelope("/revoke_delegation", rev)

    def key_usage(self, key_id: str, days: int = 30) -> dict[str, Any]:
        """An API key's usage per day and model (the owner's key, or the operator token)."""
        headers = (
            self._operator()
            if self.operator_token and self.identity is None
            else self.auth_headers("/get_delegation_usage")
        )
        return self._call(
            "GET", f"/get_delegation_usage/{key_id}", params={"days": days}, headers=headers
        )
