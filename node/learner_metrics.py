"""Held-out metrics that learners report, defined once so every learner agrees.

A regression learner and the scikit-learn adapter must report the same
``loss``/``rmse``/``r2`` for the same predictions, or a dashboard comparing
nodes would compare different formulas. Everything is computed in float64
from predictions, whatever dtype the model runs in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "regression_metrics"]


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose predicted label equals the true one; 0.0 with no rows."""
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """``loss`` (MSE), ``rmse`` and ``r2`` of (rows, n_outputs) predictions.

    ``loss`` is the mean squared error over every row and output, ``rmse`` its
    square root. ``r2`` is ``1 - SS_res / SS_tot`` per output, averaged
    uniformly over outputs (scikit-learn's ``r2_score`` default). When an
    output's targets are all equal (SS_tot = 0) the ratio is undefined; that
    output scores 1.0 if it is predicted exactly and 0.0 otherwise, as
    scikit-learn does, so a constant-target node neither crashes the report nor
    claims a perfect fit it does not have. With no rows every metric is 0.0.
    """
    Y = np.asarray(targets, dtype=np.float64)
    P = np.asarray(predictions, dtype=np.float64)
    if Y.shape != P.shape or Y.ndim != 2:
        raise ValueError(f"targets {Y.shape} and predictions {P.shape} must be equal 2-D shapes")
    if Y.shape[0] == 0:
        return {"loss": 0.0, "rmse": 0.0, "r2": 0.0}
    residual = Y - P
    mse = float(np.mean(residual**2))
    ss_res = np.sum(residual**2, axis=0)
    ss_tot = np.sum((Y - Y.mean(axis=0)) ** 2, axis=0)
    constant = ss_tot == 0.0
    per_output = np.where(
        constant,
        np.where(ss_res == 0.0, 1.0, 0.0),
        1.0 - ss_res / np.where(constant, 1.0, ss_tot),
    )
    return {"loss": mse, "rmse": float(np.sqrt(mse)), "r2": float(np.mean(per_output))}
