"""Learners: the models a node trains, behind one small interface.

A learner holds its weights as named float32 arrays, the same names and shapes
that travel on the wire (``weight_spec``), so the node loop can load a global
model, train, and compute a delta without knowing which model it runs. The math
lives in ``fedbus.kernels``; a learner only validates and orchestrates.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from fedbus.kernels.softmax import (
    softmax_cross_entropy_grad,
    softmax_predict_proba,
    softmax_sgd_epoch,
)

__all__ = ["Learner", "SoftmaxRegression", "WeightSpec"]

#: Tensor name -> (shape, dtype name), in wire order.
WeightSpec = dict[str, tuple[tuple[int, ...], str]]


@runtime_checkable
class Learner(Protocol):
    """What the node loop needs from a model; a user's own model plugs in here."""

    def weight_spec(self) -> WeightSpec:
        """Names, shapes and dtypes of the weights, which the aggregator checks updates against."""
        ...

    def get_weights(self) -> dict[str, np.ndarray]:
        """A copy of the current weights, safe to keep while training goes on."""
        ...

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the weights (e.g. with a new global model); raises on a spec mismatch."""
        ...

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> float:
        """Train locally in place and return the last epoch's mean loss."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels for the rows of X."""
        ...

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics on held-out data, at least ``accuracy`` and ``loss``."""
        ...


class SoftmaxRegression:
    """Multinomial logistic regression ``softmax(X @ W + b)``, weights starting at zero.

    Zero start makes every run (and every node) begin from the same point with
    no seed to agree on. Inputs must already be what the kernels take: float32
    C-contiguous X and int64 labels in ``[0, n_classes)``; anything else raises
    :class:`~fedbus.broker.errors.KernelInputError` instead of being converted
    behind the caller's back.
    """

    def __init__(self, n_features: int, n_classes: int) -> None:
        if n_features < 0 or n_classes < 1:
            raise ValueError(
                f"need n_features >= 0 and n_classes >= 1, got {n_features}, {n_classes}"
            )
        self.n_features = n_features
        self.n_classes = n_classes
        self._W = np.zeros((n_features, n_classes), dtype=np.float32)
        self._b = np.zeros(n_classes, dtype=np.float32)

    def weight_spec(self) -> WeightSpec:
        """``{"W": ((n_features, n_classes), "float32"), "b": ((n_classes,), "float32")}``."""
        return {
            "W": ((self.n_features, self.n_classes), "float32"),
            "b": ((self.n_classes,), "float32"),
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies, so a caller holding them (e.g. as a delta's base) sees no later training."""
        return {"W": self._W.copy(), "b": self._b.copy()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy in weights that match ``weight_spec`` exactly.

        Names, shapes and dtypes are all checked before anything changes, so a
        bad model leaves the learner as it was. A wrong dtype is an error rather
        than a silent cast: it means the sender and this node disagree on the task.
        """
        spec = self.weight_spec()
        if set(weights) != set(spec):
            raise ValueError(f"weights must be named {sorted(spec)}, got {sorted(weights)}")
        for name, (shape, dtype) in spec.items():
            value = weights[name]
            if not isinstance(value, np.ndarray):
                raise ValueError(f"weight {name!r} must be a numpy array")
            if value.shape != shape or value.dtype != np.dtype(dtype):
                raise ValueError(
                    f"weight {name!r} must be {dtype} {shape}, got {value.dtype} {value.shape}"
                )
        self._W = np.array(weights["W"], dtype=np.float32, order="C", copy=True)
        self._b = np.array(weights["b"], dtype=np.float32, order="C", copy=True)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> float:
        """Run ``epochs`` epochs of minibatch SGD on the mean cross-entropy.

        Each epoch visits the rows in ``rng.permutation(len(X))``, so the caller's
        generator alone decides the order and a run can be replayed. X and y are
        only read. Returns the last epoch's mean batch loss.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        loss = 0.0
        for _ in range(epochs):
            order = rng.permutation(len(X)).astype(np.int64, copy=False)
            loss = softmax_sgd_epoch(X, y, self._W, self._b, order, batch_size, lr)
        return loss

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, (rows, n_classes) float32."""
        return softmax_predict_proba(X, self._W, self._b)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class of each row, int64 (ties go to the lower class)."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy`` (fraction of rows predicted right; 0.0 with no rows) and mean ``loss``."""
        loss, _, _ = softmax_cross_entropy_grad(X, y, self._W, self._b)
        accuracy = float(np.mean(self.predict(X) == y)) if len(X) else 0.0
        return {"accuracy": accuracy, "loss": loss}
