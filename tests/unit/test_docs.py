"""The README documents every setting, and .env only names real ones."""

from __future__ import annotations

import re
from pathlib import Path

from supernode.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"SUPERNODE_{name.upper()}"
        for name in Settings.model_fields
        if f"`SUPERNODE_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_env_file_names_only_real_settings() -> None:
    names = re.findall(r"^(SUPERNODE_\w+)=", (ROOT / ".env").read_text(), re.M)
    known = {f"SUPERNODE_{n.upper()}" for n in Settings.model_fields}
    assert names and set(names) <= known
