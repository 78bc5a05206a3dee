"""API keys a user made with the CLI, remembered on the user's disk so that `supernode
client keys list / usage / revoke` can find them by id (``~/.supernode/keys.json``, or
``$SUPERNODE_KEYS_FILE``; written atomically, readable by its owner only)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
