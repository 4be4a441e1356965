"""Markdown tables, the one writer behind every table the package prints or writes (bench, time to
accuracy, simulator, report, examples)."""
from __future__ import annotations


def markdown(columns: list[str], rows: list[list], align: str = "") -> str:
    """A GitHub Markdown table. `rows` hold the cells as they should read (already formatted; None reads
    "-"); `align` has one letter per column, `l` or `r` (numbers), default all `r` but the first."""
    align = align or "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns) or any(len(r) != len(columns) for r in rows):
        raise ValueError(f"table: {len(columns)} columns, alignment {align!r}, rows of "
                         f"{sorted({len(r) for r in rows})} cells")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    cells = [columns] + [["-" if c is None else str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], rule] + lines[1:])
