"""The bootstrap scores its resamples as the point estimates are scored."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("k", [2, 3, 5])
def test_resamples_are_scored_as_scikit_learn_scores_them(k: int) -> None:
    """The bootstrap's numpy scorer gives summary_metrics' values (scikit-learn's) on resamples with ties,
    missing classes and predicted-but-absent classes."""
    from medens.evaluate.bootstrap import bootstrap_indices, resample_summary
    from medens.evaluate.metrics import summary_metrics

    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 40)
    probs = np.round(rng.dirichlet(np.ones(k), 40), 1)  # rounded: many tied scores
    probs /= probs.sum(axis=1, keepdims=True)
    for sel in bootstrap_indices(40, 60, seed=1)[:, : rng.integers(3, 40)]:
        want = summary_metrics(probs[sel], labels[sel])
        got = resample_summary(probs[sel], labels[sel])
        assert set(got) == set(want)
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12, nan_ok=True), name
