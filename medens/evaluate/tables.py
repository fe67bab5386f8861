"""Numbers as table cells: metrics, intervals and p-values as text (the tables themselves: :mod:`medens.io`)."""

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
