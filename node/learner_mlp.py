"""A small ReLU multilayer perceptron: the learner for classes no line separates."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.broker.layouts import initial_weights, weight_shapes
from fedbus.kernels.mlp import mlp_forward, mlp_loss_grad, mlp_sgd_epoch
from fedbus.node.learner_metrics import accuracy
from fedbus.node.learner_weights import (
    HeldWeights,
    TaskKind,
)

__all__ = ["MLPClassifier"]


class MLPClassifier(HeldWeights):
    """ReLU hidden layers and a softmax output, trained on the mean cross-entropy.

    The weights are ``W1, b1, ..., WL, bL`` with ``Wi`` (n_in, n_out), the
    ``mlp`` layout of :mod:`fedbus.broker.layouts`, and start where the
    aggregator's initial model starts: ``initial_weights("mlp", shapes, seed)``
    (He-normal weights, zero biases), so a node that builds its own learner
    and the aggregator agree without exchanging a model. Inputs must already be
    what the kernels take: float32 C-contiguous X and int64 labels in
    ``[0, n_classes)``; anything else raises
    :class:`~fedbus.broker.errors.KernelInputError`.
    """

    task_kind: TaskKind = "classification"

    def __init__(
        self, n_features: int, hidden: Sequence[int], n_classes: int, seed: int = 0
    ) -> None:
        try:
            shapes = weight_shapes("mlp", n_features, n_classes, hidden)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self.n_features = n_features
        self.hidden = tuple(int(h) for h in hidden)
        self.n_classes = n_classes
        self.seed = seed
        super().__init__(initial_weights("mlp", shapes, seed))

    def _layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(W1, b1), ...]`` as views of the learner's own arrays, which the kernel updates."""
        count = len(self._weights) // 2
        return [(self._weights[f"W{i}"], self._weights[f"b{i}"]) for i in range(1, count + 1)]

    def _epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """One epoch of SGD with backpropagation (the kernel draws the permutation)."""
        return mlp_sgd_epoch(X, y, self._layers(), batch_size, lr, rng)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, (rows, n_classes) float32."""
        return mlp_forward(X, self._layers())

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class of each row, int64 (ties go to the lower class)."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy`` (0.0 with no rows) and ``loss``, the mean cross-entropy."""
        loss, _ = mlp_loss_grad(X, y, self._layers())
        return {"accuracy": accuracy(self.predict(X), y), "loss": loss}
