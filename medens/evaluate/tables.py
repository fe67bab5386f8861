"""Tables as text: aligned plain text for the terminal, GitHub markdown for reports."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_value(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A metric as fixed-point text (``+`` before positive values if ``signed``); ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) < 0.5 * 10**-digits:
        value = 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if signed and value != 0 else f"{value:.{digits}f}"


def format_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3, signed: bool = False) -> str:
    """``value [low, high]``, or just the value when the interval is missing or undefined."""
    text = format_value(value, digits, signed)
    if ci is None or any(c is None or math.isnan(c) for c in ci):
        return text
    return f"{text} [{format_value(ci[0], digits, signed)}, {format_value(ci[1], digits, signed)}]"


def format_p(p: float) -> str:
    """A p-value with three significant digits, ``<1e-4`` below that."""
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"


def _check(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"rows[{i}]: expected {len(headers)} cells to match headers, received {len(row)}"
            )


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Columns padded to a common width.

    Args:
        headers: column titles.
        rows: cells as text, one sequence per row.
        align: one letter per column, ``l`` or ``r``; default: first column left, the rest right.

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    _check(headers, rows)
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align: expected {len(headers)} letters from 'l'/'r', received {align!r}")
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (``|`` in cells escaped); first column left-, others right-aligned."""
    _check(headers, rows)

    def cell(c: str) -> str:
        return str(c).replace("|", "\\|")

    align = ["---"] + ["--:"] * (len(headers) - 1)
    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
