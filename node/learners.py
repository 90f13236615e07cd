"""Learners: the models a node trains, behind one small interface.

A learner holds its weights as named float32 arrays, the same names and shapes
that travel on the wire (``weight_spec``), so the node loop can load a global
model, train, and compute a delta without knowing which model it runs. The math
lives in ``fedbus.kernels``; a learner only validates and orchestrates.

The built-in learners live one per module (``learner_linear``,
``learner_logistic``, ``learner_softmax``, ``learner_mlp``) and are re-exported
here; :func:`build_learner` picks one from what a task tells a node: the
learner's name and its tensor shapes. ``docs/LEARNERS.md`` describes the
contract for anyone plugging in a model of their own.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.broker.layouts import LEARNERS, layer_sizes, weight_shapes
from fedbus.node.learner_linear import LinearRegression
from fedbus.node.learner_logistic import LogisticRegression
from fedbus.node.learner_mlp import MLPClassifier
from fedbus.node.learner_softmax import SoftmaxRegression
from fedbus.node.learner_weights import TaskKind, WeightSpec

__all__ = [
    "Learner",
    "LinearRegression",
    "LogisticRegression",
    "MLPClassifier",
    "SoftmaxRegression",
    "TaskKind",
    "WeightSpec",
    "build_learner",
]


@runtime_checkable
class Learner(Protocol):
    """What the node loop needs from a model; a user's own model plugs in here."""

    @property
    def task_kind(self) -> TaskKind:
        """``"classification"`` or ``"regression"``: which labels and metrics apply."""
        ...

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
        """Predicted labels (classification) or values (regression) for the rows of X."""
        ...

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics on held-out data: ``loss`` always, plus ``accuracy`` for
        classification or ``rmse`` and ``r2`` for regression."""
        ...


def build_learner(learner: str, shapes: Mapping[str, tuple[int, ...]]) -> Learner:
    """The built-in learner a task names, sized from the task's tensor shapes.

    A node knows only what the task carries: the learner's name (one of
    :data:`fedbus.broker.layouts.LEARNERS`) and the name -> shape layout. For
    ``mlp`` the layer widths come from :func:`~fedbus.broker.layouts.layer_sizes`;
    for the linear learners from ``W``'s shape. The layout must then be exactly
    what :func:`~fedbus.broker.layouts.weight_shapes` gives for those sizes
    (same names, shapes and order), so a node never trains a model the
    aggregator would lay out differently. Anything else raises ConfigError.

    An mlp starts from ``initial_weights("mlp", shapes, 0)``; a node replaces
    that with the global model before training anyway.
    """
    layout = _plain_shapes(shapes)
    if learner == "mlp":
        n_features, *hidden, n_classes = layer_sizes(layout)
        _require_layout(learner, layout, weight_shapes("mlp", n_features, n_classes, hidden))
        return MLPClassifier(n_features, hidden, n_classes)
    if learner not in LEARNERS:
        raise ConfigError(f"unknown learner {learner!r}: expected one of {', '.join(LEARNERS)}")
    W = layout.get("W")
    if W is None or len(W) != 2:
        raise ConfigError(f"a {learner} layout is W (n_features, n_outputs) and b, got {layout}")
    n_features, n_outputs = W
    _require_layout(learner, layout, weight_shapes(learner, n_features, n_outputs))
    if learner == "linear":
        return LinearRegression(n_features, n_outputs)
    if learner == "logistic":
        return LogisticRegression(n_features)
    return SoftmaxRegression(n_features, n_outputs)


def _plain_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``shapes`` as a dict of int tuples (a decoded task may hold lists or numpy ints)."""
    try:
        return {str(name): tuple(int(d) for d in shape) for name, shape in shapes.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"tensor shapes must be sequences of ints, got {shapes!r}") from None


def _require_layout(
    learner: str, layout: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> None:
    if list(layout.items()) != list(expected.items()):
        raise ConfigError(
            f"the tensor shapes {layout} are not a {learner} layout; expected {expected}"
        )
