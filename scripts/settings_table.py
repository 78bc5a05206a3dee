"""Print the README's settings table from supernode/config.py (field comments and
defaults), or with --write, replace the table in README.md.

    .venv/bin/python scripts/settings_table.py --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from supernode.config import Settings

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| setting | default | meaning |"


def table() -> str:
    fields = Settings.model_fields
    rows, comment = [], []
    for line in (ROOT / "supernode/config.py").read_text().splitlines():
        st = line.strip()
        if st.startswith("# ---"):
            comment = []
        elif st.startswith("#"):
            comment.append(st[1:].strip())
        else:
            m = re.match(r"^(\w+): .*", st)
            if m and m.group(1) in fields and comment:
                default = fields[m.group(1)].default
                shown = "" if default is None else str(default)
                name = f"SUPERNODE_{m.group(1).upper()}"
                rows.append(f"| `{name}` | `{shown}` | {' '.join(comment)} |")
            comment = []
    return "\n".join([HEADER, "|---|---|---|", *rows])


def main() -> int:
    if "--write" not in sys.argv:
        sys.stdout.write(table() + "\n")
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + table() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
