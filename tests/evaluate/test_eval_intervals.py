"""Intervals of bounded metrics over runs stay within the bounds, and from fewer than three runs none is claimed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medens.evaluate.paired import MIN_RUNS_BOUNDED, compare, spread
from medens.evaluate.study_report import render_report, summarize_study


def test_two_runs_of_a_bounded_metric_give_no_interval_but_a_plain_number_still_does():
    values = [0.292, 0.375]  # their t-interval leaves [0, 1]: the accuracy example
    assert all(math.isnan(c) for c in spread(values, (0.0, 1.0)).ci)
    low, high = spread(values).ci  # unbounded: the Student-t interval, as before
    expected = stats.t.interval(0.95, 1, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(2))
    assert (low, high) == pytest.approx(expected) and low < 0.0
    assert MIN_RUNS_BOUNDED == 3


@pytest.mark.parametrize("values", [[0.9, 0.97, 1.0], [0.0, 0.05, 0.3, 0.02], [0.45, 0.5, 0.55, 0.6, 0.52]])
def test_a_bounded_interval_stays_inside_the_bounds(values):
    s = spread(values, (0.0, 1.0))
    assert 0.0 <= s.ci[0] < s.ci[1] <= 1.0
    assert s.mean == pytest.approx(np.mean(values)) and s.std == pytest.approx(np.std(values, ddof=1))


def test_away_from_the_bounds_it_is_close_to_the_t_interval_and_asymmetric_near_them():
    middle = [0.45, 0.5, 0.55, 0.6, 0.52]
    plain, bounded = spread(middle).ci, spread(middle, (0.0, 1.0)).ci
    assert bounded == pytest.approx(plain, abs=0.01)
    s = spread([0.9, 0.95, 0.99], (0.0, 1.0))
    assert s.ci[1] - s.mean < s.mean - s.ci[0]  # less room above, near 1
    t_interval = stats.t.interval(0.95, 2, loc=s.mean, scale=s.std / math.sqrt(3))
    assert t_interval[1] > 1.0 >= s.ci[1]  # where the plain interval leaves [0, 1]


def test_differences_of_bounded_metrics_stay_in_minus_one_to_one():
    c = compare("a - b", "accuracy", [0.9, 0.2, 0.95], [0.1, 0.9, 0.05], 0.25)
    assert -1.0 <= c.spread.ci[0] < c.spread.ci[1] <= 1.0
    assert all(math.isnan(v) for v in compare("a - b", "accuracy", [0.5, 0.6], [0.4, 0.2], 0.25).spread.ci)


def _study(folds: int) -> dict:
    rng = np.random.default_rng(0)
    runs, pooled = [], {}
    for model in ("imagenet", "mae", "ensemble"):
        parts = []
        for fold in range(folds):
            acc = float(rng.uniform(0.25, 0.45))
            runs.append({"fold": fold, "seed": 0, "variant": None if model == "imagenet" else "default",
                         "model": model, "label": model, "n_test": 12, "accuracy": acc, "balanced_accuracy": acc,
                         "macro_f1": acc, "auroc_macro": acc})
            labels = np.arange(12) % 3
            parts.append((labels, rng.dirichlet(np.ones(3), 12)))
        pooled[(0, None if model == "imagenet" else "default", model)] = (
            [], np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    metrics = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
    summary = summarize_study(runs, pooled, variants=["default"], baselines={}, metrics=metrics,
                              test_train_ratio=0.5)
    return {"dataset": "synthetic", "preset": "smoke", "folds": folds, "seeds": [0], "split_seed": 0, "dedupe": "on",
            "variants": [{"name": "default", "pretrain": {}}], "test_train_ratio": 0.5, "runs": runs, **summary}


def test_the_study_report_says_two_runs_give_no_interval_and_never_leaves_the_bounds():
    record = _study(2)
    report = render_report(record, ("accuracy", "macro_f1"))
    assert "none from 2 runs" in report and "fewer than 3 runs".lower() in report.lower()
    for entry in record["models"]:
        assert all(math.isnan(c) for c in entry["metrics"]["accuracy"]["ci"])
    record = _study(4)
    for entry in record["models"]:
        low, high = entry["metrics"]["accuracy"]["ci"]
        assert 0.0 <= low <= high <= 1.0
    for comparison in record["comparisons"]:
        assert -1.0 <= comparison["ci"][0] <= comparison["ci"][1] <= 1.0


def test_two_paired_runs_give_no_verdict_however_far_apart_they_are():
    # Differences of +0.40 and +0.41: the corrected t-test with one degree of freedom says p < 0.05 ...
    two = compare("a - b", "accuracy", [0.90, 0.91], [0.50, 0.50], 0.25)
    assert two.corrected_p < 0.05
    # ... but from two runs the study claims no more than it claims an interval.
    assert not two.decided and two.within_noise
    assert two.verdict().startswith("too few runs to tell") and "+0.405" in two.verdict()
    assert two.as_dict()["decided"] is False
    three = compare("a - b", "accuracy", [0.90, 0.91, 0.92], [0.50, 0.50, 0.51], 0.25)
    assert three.decided and not three.within_noise and three.verdict().startswith("higher beyond noise")


def test_the_study_report_gives_no_verdict_from_two_runs():
    record = _study(2)
    # Make every paired difference large and steady, so that only the run count stands between it and a verdict.
    for run in record["runs"]:
        if run["model"] == "ensemble":
            for metric in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
                run[metric] = 0.95 - 0.001 * run["fold"]
        elif run["model"] == "mae":
            for metric in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
                run[metric] = 0.30 + 0.001 * run["fold"]
    record.update(summarize_study(record["runs"], {}, variants=["default"], baselines={},
                                  metrics=("accuracy", "balanced_accuracy"), test_train_ratio=0.5))
    steady = [c for c in record["comparisons"] if c["a"].startswith("ensemble") and c["b"].startswith("mae")]
    assert steady and all(c["corrected_p"] < 0.05 for c in steady)
    report = render_report(record, ("accuracy", "balanced_accuracy"))
    assert "beyond noise" not in report
    assert "| too few runs |" in report and "too few runs to tell" in report
