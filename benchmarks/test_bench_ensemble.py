"""Timings of the ensemble evaluation at BUSI's test-set size (156 images, 3 classes, 2 members).

Run with ``pytest benchmarks/test_bench_ensemble.py --benchmark``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medens.evaluate.bootstrap import bootstrap_samples
from medens.evaluate.calibration import fit_temperature, softmax
from medens.evaluate.combine import combine, fit_weights
from medens.evaluate.ensemble import evaluate_ensemble
from medens.evaluate.members import Member, member_name_and_label
from medens.evaluate.metrics import summary_metrics
from medens.evaluate.predictions import Predictions

N_TEST, N_VAL, K = 156, 78, 3
CLASSES = ["benign", "malignant", "normal"]


def _probs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % K
    return softmax(rng.normal(size=(n, K)) + 2.0 * np.eye(K)[labels]), labels


@pytest.mark.benchmark
def test_bench_summary_metrics(benchmark) -> None:
    probs, labels = _probs(0, N_TEST)
    result = benchmark(summary_metrics, probs, labels)
    assert 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.benchmark
def test_bench_bootstrap_1000_three_models(benchmark) -> None:
    (a, labels), (b, _) = _probs(0, N_TEST), _probs(1, N_TEST)
    models = {"a": a, "b": b, "ensemble": combine([a, b])}
    out = benchmark.pedantic(bootstrap_samples, args=(models, labels), kwargs={"n_boot": 1000}, rounds=3)
    assert out["ensemble"]["accuracy"].shape == (1000,)


@pytest.mark.benchmark
def test_bench_fit_temperature_and_weights(benchmark) -> None:
    (a, labels), (b, _) = _probs(2, N_VAL), _probs(3, N_VAL)

    def fit() -> np.ndarray:
        return fit_weights([a, b], labels) * fit_temperature(a, labels)

    assert benchmark(fit).shape == (2,)


@pytest.mark.benchmark
def test_bench_evaluate_ensemble_end_to_end(benchmark, tmp_path: Path) -> None:
    # Members as load_member returns them, built in memory: reading the folders is not what is timed.
    members = []
    for i, init in enumerate(["imagenet", "mae:x"]):
        test, tl = _probs(10 + i, N_TEST)
        val, vl = _probs(20 + i, N_VAL)
        directory = tmp_path / init.split(":")[0]
        config = {"classes": CLASSES, "init": init, "split_hash": "h"}
        members.append(
            Member(
                *member_name_and_label(config, directory),
                directory=directory,
                config=config,
                test=Predictions([f"t{j}" for j in range(N_TEST)], [CLASSES[j] for j in tl], CLASSES, test),
                val=Predictions([f"v{j}" for j in range(N_VAL)], [CLASSES[j] for j in vl], CLASSES, val),
            )
        )
    results = benchmark.pedantic(evaluate_ensemble, args=(members, tmp_path / "ens"), rounds=2)
    assert results["n_test"] == N_TEST
