"""Softmax regression: the multiclass linear learner of the reference task."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np

from fedbus.kernels.softmax import (
    softmax_cross_entropy_grad,
    softmax_predict_proba,
    softmax_sgd_epoch,
)
from fedbus.node.learner_metrics import accuracy
from fedbus.node.learner_weights import (
    LinearWeights,
    TaskKind,
)

__all__ = ["SoftmaxRegression"]


class SoftmaxRegression(LinearWeights):
    """Multinomial logistic regression ``softmax(X @ W + b)``, weights starting at zero.

    Zero start makes every run (and every node) begin from the same point with
    no seed to agree on. Inputs must already be what the kernels take: float32
    C-contiguous X and int64 labels in ``[0, n_classes)``; anything else raises
    :class:`~fedbus.broker.errors.KernelInputError` instead of being converted
    behind the caller's back.
    """

    task_kind: TaskKind = "classification"

    def __init__(self, n_features: int, n_classes: int) -> None:
        if n_features < 0 or n_classes < 1:
            raise ValueError(
                f"need n_features >= 0 and n_classes >= 1, got {n_features}, {n_classes}"
            )
        self.n_features = n_features
        self.n_classes = n_classes
        super().__init__(n_features, n_classes)

    def _epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """One epoch on the mean cross-entropy, rows in ``rng.permutation(len(X))``."""
        order = rng.permutation(len(X)).astype(np.int64, copy=False)
        return softmax_sgd_epoch(X, y, self._W, self._b, order, batch_size, lr)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, (rows, n_classes) float32."""
        return softmax_predict_proba(X, self._W, self._b)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class of each row, int64 (ties go to the lower class)."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy`` (fraction of rows predicted right; 0.0 with no rows) and mean ``loss``."""
        loss, _, _ = softmax_cross_entropy_grad(X, y, self._W, self._b)
        return {"accuracy": accuracy(self.predict(X), y), "loss": loss}
