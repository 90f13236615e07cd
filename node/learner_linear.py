"""Linear regression: the learner for sensor values and other real-valued targets."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.linear import linear_predict, linear_sgd_epoch
from fedbus.node.learner_metrics import regression_metrics
from fedbus.node.learner_weights import (
    LinearWeights,
    TaskKind,
)

__all__ = ["LinearRegression"]


class LinearRegression(LinearWeights):
    """Least-squares linear model ``X @ W + b``, weights starting at zero.

    ``W`` is (n_features, n_outputs) and ``b`` (n_outputs,), the ``linear``
    layout of :mod:`fedbus.broker.layouts`. Inputs must already be what the
    kernels take: float32 C-contiguous X and float32 targets, shaped
    (rows, n_outputs) or (rows,) when there is one output; anything else
    raises :class:`~fedbus.broker.errors.KernelInputError`.

    Training follows the gradient of half the squared error (the kernel's
    objective, so ``lr`` means what it means in :mod:`fedbus.kernels.linear`),
    but every loss this learner *reports* is the plain mean squared error over
    rows and outputs, so ``fit`` and ``evaluate`` speak the same unit.
    """

    task_kind: TaskKind = "regression"

    def __init__(self, n_features: int, n_outputs: int = 1) -> None:
        if n_features < 0 or n_outputs < 1:
            raise ValueError(
                f"need n_features >= 0 and n_outputs >= 1, got {n_features}, {n_outputs}"
            )
        self.n_features = n_features
        self.n_outputs = n_outputs
        super().__init__(n_features, n_outputs)

    def _epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """The kernel's batch loss is half the squared error summed over outputs;
        it is rescaled to the MSE that ``evaluate`` reports."""
        half_loss = linear_sgd_epoch(X, y, self._W, self._b, batch_size, lr, rng)
        return 2.0 * half_loss / self.n_outputs

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted values, float32: (rows,) with one output, else (rows, n_outputs).

        One output comes back 1-D, the shape targets are usually given in and
        the shape the portable model file predicts.
        """
        predictions = linear_predict(X, self._W, self._b)
        return predictions.reshape(-1) if self.n_outputs == 1 else predictions

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``loss`` (MSE), ``rmse`` and ``r2``, as defined in :func:`regression_metrics`.

        ``r2`` is 1.0 for an output whose targets are constant and predicted
        exactly, 0.0 for one whose targets are constant otherwise.
        """
        predictions = linear_predict(X, self._W, self._b)
        return regression_metrics(_targets(y, len(X), self.n_outputs), predictions)


def _targets(y: object, n_rows: int, n_outputs: int) -> np.ndarray:
    """``y`` as (n_rows, n_outputs), held to the same rules as the kernel's targets."""
    if not isinstance(y, np.ndarray) or y.dtype != np.float32:
        kind = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise KernelInputError(f"y must be a float32 numpy array, got {kind}")
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.shape != (n_rows, n_outputs):
        raise KernelInputError(
            f"y must have shape ({n_rows}, {n_outputs}) (or ({n_rows},) for one output), "
            f"got {y.shape}"
        )
    return y
