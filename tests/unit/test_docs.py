"""docs/settings.md documents every setting as config.py has it, and .env only names real
ones."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from supernode.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DOC = ROOT / "docs" / "settings.md"


def _settings_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts/settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_doc_lists_every_setting_with_its_default() -> None:
    doc = SETTINGS_DOC.read_text()
    missing = []
    for name, field in Settings.model_fields.items():
        shown = "" if field.default is None else str(field.default)
        if f"| `SUPERNODE_{name.upper()}` | `{shown}` |" not in doc:
            missing.append(f"SUPERNODE_{name.upper()}")
    assert missing == [], "run: .venv/bin/python scripts/settings_table.py --write"


def test_settings_doc_table_is_the_generated_one() -> None:
    script = _settings_script()
    written = script.generated_part(SETTINGS_DOC.read_text())
    assert written == script.table(), "run: .venv/bin/python scripts/settings_table.py --write"
    rows = [line for line in written.splitlines() if line.startswith("| `SUPERNODE_")]
    assert len(rows) == len(Settings.model_fields)


def test_env_file_names_only_real_settings() -> None:
    names = re.findall(r"^(SUPERNODE_\w+)=", (ROOT / ".env").read_text(), re.M)
    known = {f"SUPERNODE_{n.upper()}" for n in Settings.model_fields}
    assert names and set(names) <= known
