"""The study's probes: the encoders of two pre-training variants compared run by run, and the report's table."""

from __future__ import annotations

import numpy as np
import pytest

from medens.evaluate.paired import compare
from medens.evaluate.study_report import _probe_section, compare_probes, summarize_probes

RANDOM, ENTROPY = "masking=random", "masking=entropy"


def _probes(runs: int, shift: dict[str, float]) -> list[dict]:
    rng = np.random.default_rng(1)
    probes = []
    for fold in range(runs):
        for variant in (RANDOM, ENTROPY):
            entry = {"fold": fold, "seed": 0, "variant": variant, "mask_grid": [6, 6]}
            for probe in ("linear", "knn"):
                enc = float(rng.uniform(0.4, 0.6)) + (shift[probe] if variant == ENTROPY else 0.0)
                entry[probe] = {"encoder": enc, "random_init": 0.4, "gain": enc - 0.4}
            probes.append(entry)
    return probes


def test_the_encoders_of_two_variants_are_compared_run_by_run() -> None:
    probes = _probes(5, {"linear": 0.0, "knn": -0.2})
    found = compare_probes(probes, {ENTROPY: RANDOM}, 0.25)
    assert [c["probe"] for c in found] == ["linear", "knn"]
    for c in found:
        a = [p[c["probe"]]["encoder"] for p in probes if p["variant"] == ENTROPY]
        b = [p[c["probe"]]["encoder"] for p in probes if p["variant"] == RANDOM]
        expected = compare("x", "balanced_accuracy", a, b, 0.25)
        assert c["differences"] == pytest.approx(expected.differences)
        assert c["corrected_p"] == pytest.approx(expected.corrected_p)
        assert c["name"] == f"{c['probe']} probe of the encoder: {ENTROPY} - {RANDOM}"
    knn = found[1]
    assert knn["losses"] == 5 and knn["mean"] < -0.1
    record = {"probe_summary": summarize_probes(probes, [RANDOM, ENTROPY]), "probe_comparisons": found}
    text = "\n".join(_probe_section(record))
    assert f"| knn probe of the encoder: {ENTROPY} - {RANDOM} |" in text and "0/5/0" in text


def test_no_probe_comparison_without_a_baseline_variant_or_paired_runs() -> None:
    probes = _probes(3, {"linear": 0.0, "knn": 0.0})
    assert compare_probes(probes, {}, 0.25) == []
    only_one_run = [p for p in probes if p["fold"] == 0 or p["variant"] == RANDOM]
    assert compare_probes(only_one_run, {ENTROPY: RANDOM}, 0.25) == []
    text = "\n".join(_probe_section({"probe_summary": summarize_probes(probes, [RANDOM]), "probe_comparisons": []}))
    assert "paired by run" not in text
