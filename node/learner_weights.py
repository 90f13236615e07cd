"""Weight bookkeeping every learner shares: the spec, strict checks, defensive copies.

A learner's weights are the tensors that travel on the wire, so every learner
must accept exactly its own layout and nothing else: a model with a wrong
name, shape or dtype means the sender and this node disagree on the task, and
silently casting or reshaping it would train on garbage. These helpers keep
that rule (and its error messages) in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

__all__ = [
    "HeldWeights",
    "LinearWeights",
    "TaskKind",
    "WeightSpec",
    "check_epochs",
    "checked_copies",
    "float32_spec",
]

#: Tensor name -> (shape, dtype name), in wire order.
WeightSpec = dict[str, tuple[tuple[int, ...], str]]

#: What a learner predicts, so callers know which metrics to show.
TaskKind = Literal["classification", "regression"]


def float32_spec(shapes: Mapping[str, tuple[int, ...]]) -> WeightSpec:
    """The spec of float32 tensors with these shapes, in the mapping's order."""
    return {name: (tuple(shape), "float32") for name, shape in shapes.items()}


def checked_copies(weights: Mapping[str, np.ndarray], spec: WeightSpec) -> dict[str, np.ndarray]:
    """C-contiguous copies of ``weights``, after checking them against ``spec`` exactly.

    Raises ValueError, before copying anything, if the names differ from the
    spec's or any tensor is not a numpy array of the spec's shape and dtype.
    Callers assign the result only after this returns, so a bad model leaves
    the learner as it was. The copies are writeable even when the inputs are
    read-only (e.g. views of a received payload), and later changes to the
    inputs do not reach the learner.
    """
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
    return {name: np.array(weights[name], order="C", copy=True) for name in spec}


def check_epochs(epochs: int) -> None:
    """Raise ValueError unless at least one epoch is asked for.

    Zero epochs would return no loss to report and send an all-zero delta
    that looks like a real update, so it is a caller's mistake, not a no-op.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")


class HeldWeights:
    """The weight half of the Learner protocol, over named float32 tensors in wire order.

    A learner keeps its tensors in ``self._weights`` (the kernels update them
    in place) and inherits ``weight_spec``, ``get_weights`` and
    ``set_weights`` from here, so the strict checks and the defensive copies
    are the same for every model.
    """

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self._spec = float32_spec({name: value.shape for name, value in weights.items()})
        self._weights = weights

    def weight_spec(self) -> WeightSpec:
        """Names, shapes and dtype (float32) of the tensors, in wire order."""
        return dict(self._spec)

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies, so a caller holding them (e.g. as a delta's base) sees no later training."""
        return {name: value.copy() for name, value in self._weights.items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy in weights that match ``weight_spec`` exactly; on a mismatch change nothing.

        A wrong dtype is an error rather than a silent cast: it means the
        sender and this node disagree on the task.
        """
        self._weights = checked_copies(weights, self._spec)

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
        """Run ``epochs`` epochs of minibatch SGD in place; return the last epoch's mean loss.

        Each epoch visits the rows in ``rng.permutation(len(X))``, so the
        caller's generator alone decides the order and a run can be replayed.
        X and y are only read. The model's own ``_epoch`` runs its kernel.
        """
        check_epochs(epochs)
        loss = 0.0
        for _ in range(epochs):
            loss = self._epoch(X, y, batch_size, lr, rng)
        return loss

    def _epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """One epoch of the model's SGD kernel; the mean batch loss in ``evaluate``'s unit."""
        raise NotImplementedError


class LinearWeights(HeldWeights):
    """``W`` (n_features, n_outputs) and ``b`` (n_outputs,), starting at zero.

    The layout of the linear, logistic and softmax learners. Zero start makes
    every run (and every node) begin from the same point with no seed to
    agree on.
    """

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__(
            {
                "W": np.zeros((n_features, n_outputs), dtype=np.float32),
                "b": np.zeros(n_outputs, dtype=np.float32),
            }
        )

    @property
    def _W(self) -> np.ndarray:  # noqa: N802 - the weight matrix's own name
        return self._weights["W"]

    @property
    def _b(self) -> np.ndarray:
        return self._weights["b"]
