"""Markdown tables of the reports: numbers to three significant digits, '-' for missing."""

from __future__ import annotations

import math
import numbers


def fmt(v: object) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, numbers.Real) and math.isnan(v)):
        return "-"
    if isinstance(v, numbers.Integral) or (float(v).is_integer() and abs(v) < 1e7):
        return str(int(v))
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
