"""The docs: docs/settings.md documents every setting as config.py has it, .env only names
real ones, and the README and docs/ link only to files in the repository."""

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


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(md: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    headings = re.findall(r"^#+ (.+)$", md.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_docs_link_only_to_files_in_the_repository() -> None:
    broken = []
    for md in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            path = (md.parent / file).resolve() if file else md
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_docs_name_nothing_outside_the_repository() -> None:
    for md in _markdown_files():
        text = md.read_text()
        assert "../shared" not in text and "design.md" not in text, md
