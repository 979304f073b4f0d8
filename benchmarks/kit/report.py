"""How the benchmarks print and save their results: progress lines (``say``), numbers
(``fmt``, ``format_value``, ``rounded``), plain-text and Markdown tables (``format_table``,
``markdown_table``, ``spec_table``) and the shared JSON result file (``write_json``).
Standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt(value: float | int | None, spec: str) -> str:
    """``format(value, spec)``; None and NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


# --- tables of the shared result format (columns + rows of plain values) -------------------------


def _decimals(size: float) -> int:
    """About 3 significant digits, never an exponent: 1234 -> 0, 12.3 -> 1, 1.23 -> 2."""
    return 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 0.1 or size == 0 else 3


def format_value(value: Any, decimals: int | None = None) -> str:
    """Numbers to a sensible precision (``decimals``, else from the value), None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{_decimals(abs(value)) if decimals is None else decimals}f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cells(columns: Sequence[str], rows: list[dict[str, Any]]) -> tuple[list[list[str]], list[bool]]:
    """Formatted cells, and which columns are numeric. One precision per column (from its
    largest value), so a column's decimals line up: 55 and 164 MB, not 55.0 and 164."""
    numeric: list[bool] = []
    decimals: list[int | None] = []
    for c in columns:
        floats = [abs(r[c]) for r in rows if isinstance(r.get(c), float) and not math.isnan(r[c])]
        numeric.append(any(_is_number(r.get(c)) for r in rows))
        decimals.append(_decimals(max(floats)) if floats else None)
    cells = [[format_value(r.get(c), d) for c, d in zip(columns, decimals, strict=True)] for r in rows]
    return cells, numeric


def format_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[str]:
    """A plain-text table: numbers right-aligned, text left-aligned."""
    cells, numeric = _cells(columns, list(rows))
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    head = line(list(columns))
    return [head, "-" * len(head), *(line(row) for row in cells)]


def markdown_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[str]:
    cells, numeric = _cells(columns, list(rows))

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in cells)]


def spec_table(columns: list[str], rows: list[dict[str, Any]], specs: dict[str, str]) -> list[str]:
    """A plain text table: numbers formatted by ``specs`` (default: str), None as '-'."""
    cells = [[fmt(r.get(c), specs[c]) if c in specs else str(r.get(c, "-")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = "  ".join(c.rjust(w) if c in specs else c.ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [head, "-" * len(head)]
    for row in cells:
        lines.append("  ".join(v.rjust(w) if c in specs else v.ljust(w)
                               for c, v, w in zip(columns, row, widths, strict=True)))
    return lines
