"""Evaluation: metrics, ensembles of fine-tuned members, calibration, plots and reports.

Everything here works on numpy arrays of probabilities ``(N, K)`` and labels ``(N,)``, or on the files a
fine-tuning run writes (``predictions.csv``, ``val_predictions.csv``, ``config.yaml``); no model is needed.

- :mod:`~medens.evaluate.metrics`      accuracy, balanced accuracy, macro P/R/F1, sensitivity/specificity, AUROC, ECE
- :mod:`~medens.evaluate.bootstrap`    paired percentile bootstrap intervals
- :mod:`~medens.evaluate.mcnemar`      McNemar's test (exact binomial or continuity-corrected chi-square)
- :mod:`~medens.evaluate.calibration`  temperature scaling fitted on validation probabilities
- :mod:`~medens.evaluate.combine`      combination rules (mean, weighted, geometric) and weight fitting
- :mod:`~medens.evaluate.predictions`  prediction CSVs
- :mod:`~medens.evaluate.members`      member folders and their compatibility checks
- :mod:`~medens.evaluate.plots`        confusion matrices, ROC curves, reliability diagrams (PNG)
- :mod:`~medens.evaluate.report`       comparison tables and ``report.md``
- :mod:`~medens.evaluate.ensemble`     all of the above for a set of members, written to a folder

The metrics are scikit-learn's (:mod:`sklearn.metrics`) and the statistical tests scipy's
(:mod:`scipy.stats`), both imported on first use; so is ``evaluate_ensemble``, so importing the metrics loads
neither matplotlib nor scikit-learn.
"""

from medens.evaluate.bootstrap import bootstrap_samples, confidence_intervals, difference_intervals
from medens.evaluate.calibration import apply_temperature, fit_temperature
from medens.evaluate.combine import ENSEMBLE_METHODS, EnsembleRule, combine, fit_rule, fit_weights
from medens.evaluate.mcnemar import McNemarResult, mcnemar
from medens.evaluate.members import IncompatibleMembersError, Member, align_members, load_member
from medens.evaluate.metrics import (
    SUMMARY_METRICS,
    auroc_macro,
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    summary_metrics,
)
from medens.evaluate.predictions import (
    Predictions,
    read_prediction_table,
    read_predictions,
    write_prediction_table,
    write_predictions,
)
from medens.evaluate.report import BASELINE_NAME, ENSEMBLE_NAME, comparison_table, render_report

__all__ = [
    "ENSEMBLE_METHODS",
    "BASELINE_NAME",
    "ENSEMBLE_NAME",
    "SUMMARY_METRICS",
    "EnsembleRule",
    "IncompatibleMembersError",
    "McNemarResult",
    "Member",
    "Predictions",
    "align_members",
    "apply_temperature",
    "auroc_macro",
    "balanced_accuracy",
    "bootstrap_samples",
    "classification_report",
    "combine",
    "comparison_table",
    "confidence_intervals",
    "confusion_matrix",
    "difference_intervals",
    "EnsembleOptions",
    "evaluate_ensemble",
    "expected_calibration_error",
    "fit_rule",
    "fit_temperature",
    "fit_weights",
    "load_member",
    "mcnemar",
    "read_prediction_table",
    "read_predictions",
    "render_report",
    "summary_metrics",
    "write_prediction_table",
    "write_predictions",
]


def __getattr__(name: str):
    """Import the ensemble evaluation (and with it matplotlib) only when it is asked for."""
    if name in ("evaluate_ensemble", "EnsembleOptions"):
        from medens.evaluate import ensemble

        return getattr(ensemble, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
