"""Text and markdown tables, and number formatting."""

from __future__ import annotations

import math

import pytest

from medens.evaluate.tables import format_ci, format_p, format_value
from medens.io import markdown_table, text_table


def test_text_table_aligns_columns() -> None:
    table = text_table(["Model", "Acc"], [["a", "0.5"], ["longer name", "0.75"]])
    lines = table.splitlines()
    assert lines[0] == "Model         Acc"
    assert lines[1] == "-----------  ----"
    assert lines[2] == "a             0.5"
    assert lines[3] == "longer name  0.75"
    assert text_table(["A", "B"], [["x", "y"]], align="ll").splitlines()[2] == "x  y"
    with pytest.raises(ValueError, match="align: expected 2 letters"):
        text_table(["A", "B"], [["x", "y"]], align="lc")
    with pytest.raises(ValueError, match=r"rows\[0\]: expected 2 cells"):
        text_table(["A", "B"], [["x"]])


def test_markdown_table_escapes_pipes() -> None:
    table = markdown_table(["Model", "Acc"], [["a|b", "1"]])
    assert table.splitlines() == ["| Model | Acc |", "| --- | --: |", "| a\\|b | 1 |"]


def test_number_formatting() -> None:
    assert format_value(0.12345) == "0.123"
    assert format_value(float("nan")) == "n/a" and format_value(None) == "n/a"
    assert format_value(-0.0001) == "0.000"  # never "-0.000"
    assert format_value(0.05, signed=True) == "+0.050"
    assert format_ci(0.9, [0.8, 1.0]) == "0.900 [0.800, 1.000]"
    assert format_ci(0.9, [math.nan, 1.0]) == "0.900"
    assert format_ci(0.02, [-0.01, 0.05], signed=True) == "+0.020 [-0.010, +0.050]"
    assert format_p(0.04567) == "0.0457" and format_p(1e-7) == "<1e-4"
