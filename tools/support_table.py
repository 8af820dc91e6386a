"""Rewrite the README's support table from the self-check, run on every family's tiny checkpoint.

    .venv/bin/python tools/support_table.py     (or `make support-table`)

The table sits between the README's ``<!-- support-table -->`` markers; tests/test_check.py fails
when it differs from what the self-check finds now.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- support-table -->", "<!-- /support-table -->"


def current(text: str) -> str:
    """The table between the markers of ``text``."""
    return text.split(START, 1)[1].split(END, 1)[0].lstrip("\n")


def replaced(text: str, table: str) -> str:
    """``text`` with ``table`` between its markers."""
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{table}{END}{rest.split(END, 1)[1]}"


def main() -> int:
    from gremlinkit import check
    from gremlinkit.results import atomic_write_text

    with tempfile.TemporaryDirectory() as tmp:
        table = check.support(Path(tmp))
    atomic_write_text(README, replaced(README.read_text(), check.support_markdown(table)))
    mapped = table[table.float32 != "refused at load"]  # the map's families; the rest say why they are not
    failed = mapped[~mapped[["float32", "bfloat16", "generation with edits"]].apply(
        lambda c: c.str.startswith("pass")).all(axis=1)]
    print(f"{len(table)} families, {len(failed)} failing: {', '.join(failed.family) or 'none'}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
