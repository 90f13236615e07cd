"""Binary logistic regression: the learner for yes/no questions (fault, occupancy, ...)."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np

from fedbus.kernels.logistic import (
    logistic_log_loss_grad,
    logistic_predict_proba,
    logistic_sgd_epoch,
)
from fedbus.node.learner_metrics import accuracy
from fedbus.node.learner_weights import (
    LinearWeights,
    TaskKind,
)

__all__ = ["LogisticRegression"]


class LogisticRegression(LinearWeights):
    """``P(y = 1 | x) = sigmoid(x @ W + b)``, weights starting at zero.

    ``W`` is (n_features, 1) and ``b`` (1,), the ``logistic`` layout of
    :mod:`fedbus.broker.layouts`. Inputs must already be what the kernels take:
    float32 C-contiguous X and int64 labels 0 or 1; anything else raises
    :class:`~fedbus.broker.errors.KernelInputError`.
    """

    task_kind: TaskKind = "classification"

    def __init__(self, n_features: int) -> None:
        if n_features < 0:
            raise ValueError(f"need n_features >= 0, got {n_features}")
        self.n_features = n_features
        super().__init__(n_features, 1)

    def _epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """One epoch on the mean log-loss (the kernel draws the permutation)."""
        return logistic_sgd_epoch(X, y, self._W, self._b, batch_size, lr, rng)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``P(y = 1)`` of each row, (rows,) float32."""
        return logistic_predict_proba(X, self._W, self._b)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 where ``P(y = 1) >= 0.5`` else 0, int64: the rule the portable model file uses."""
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy`` (0.0 with no rows) and ``loss``, the mean log-loss."""
        loss, _, _ = logistic_log_loss_grad(X, y, self._W, self._b)
        return {"accuracy": accuracy(self.predict(X), y), "loss": loss}
