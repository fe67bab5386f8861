"""Statistics over runs, checked against scipy and hand computations on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from medens.evaluate.paired import compare, corrected_resampled_ttest, spread, wilcoxon_p

DIFFS = [0.02, -0.01, 0.035, 0.01, 0.0, 0.025, -0.005, 0.04, 0.015, 0.03]


def test_spread_is_the_student_t_interval():
    values = [0.71, 0.68, 0.74, 0.70, 0.66, 0.73]
    s = spread(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert s.n == 6 and s.mean == pytest.approx(np.mean(values)) and s.std == pytest.approx(np.std(values, ddof=1))
    assert s.ci == pytest.approx((low, high))
    assert spread([0.5]).n == 1 and all(math.isnan(c) for c in spread([0.5]).ci)
    assert spread([0.5, float("nan"), 0.7]).n == 2


def test_corrected_ttest_without_correction_is_scipys_one_sample_ttest():
    t, p = corrected_resampled_ttest(DIFFS, 0.0)
    expected = stats.ttest_1samp(DIFFS, 0.0)
    assert t == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)


def test_corrected_ttest_inflates_the_variance_by_the_test_train_ratio():
    ratio = 1 / 4  # 5-fold cross-validation
    d = np.array(DIFFS)
    t_expected = d.mean() / math.sqrt((1 / d.size + ratio) * d.var(ddof=1))
    t, p = corrected_resampled_ttest(DIFFS, ratio)
    assert t == pytest.approx(t_expected)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_expected), d.size - 1))
    assert p > stats.ttest_1samp(DIFFS, 0.0).pvalue  # more cautious than the plain test
    assert corrected_resampled_ttest([0.0, 0.0, 0.0], ratio) == (0.0, 1.0)
    assert corrected_resampled_ttest([0.1, 0.1], ratio) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="at least 2 paired runs, received 1"):
        corrected_resampled_ttest([0.1], ratio)
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_resampled_ttest(DIFFS, -1.0)


def test_wilcoxon_is_scipys_and_all_zero_is_no_evidence():
    assert wilcoxon_p(DIFFS) == pytest.approx(stats.wilcoxon(DIFFS, zero_method="wilcox").pvalue)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_compare_counts_wins_and_says_within_noise():
    a = [0.80, 0.75, 0.82, 0.79, 0.70, 0.77]
    b = [0.78, 0.76, 0.80, 0.79, 0.72, 0.74]
    c = compare("ensemble - member", "accuracy", a, b, 0.25)
    assert (c.wins, c.losses, c.ties) == (3, 2, 1)
    assert c.differences == pytest.approx(np.subtract(a, b).tolist())
    assert c.within_noise and c.verdict().startswith("within noise")
    clear = compare("x", "accuracy", [0.9] * 5 + [0.91], [0.5] * 6, 0.25)
    assert not clear.within_noise and clear.verdict().startswith("higher beyond noise")
    with pytest.raises(ValueError, match="as many runs as a"):
        compare("x", "accuracy", a, b[:-1], 0.25)
