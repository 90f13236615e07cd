"""A scikit-learn linear model as a fedbus learner, so a familiar estimator can join a fleet.

Any estimator with ``partial_fit`` and ``coef_``/``intercept_``
(``SGDClassifier``, ``SGDRegressor``, ``Perceptron``, ...) already holds one
weight matrix and one bias vector, which is the layout fedbus's linear
learners put on the wire. The adapter only moves them in and out in that
layout, so the aggregator averages them like any other model:

- binary classifier: ``coef_`` (1, d) is ``W`` (d, 1) and ``intercept_`` (1,)
  is ``b``, the ``logistic`` layout;
- classifier with k > 2 classes: ``coef_`` (k, d) is ``W`` (d, k), the
  ``softmax`` layout's shape (but scikit-learn trains k one-vs-rest models, not
  a softmax, so do not mix such nodes with SoftmaxRegression nodes in one task);
- regressor: ``coef_`` (d,) is ``W`` (d, 1), the ``linear`` layout.

scikit-learn is an optional dependency (the ``demo`` extra) and is imported
only when an adapter is built.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import importlib
import operator
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from fedbus.node.learner_metrics import accuracy, regression_metrics
from fedbus.node.learner_weights import TaskKind, WeightSpec, check_epochs, checked_copies

__all__ = ["SklearnAdapter"]


def _sklearn(module: str) -> ModuleType:
    """Import a scikit-learn module, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            "SklearnAdapter needs scikit-learn, an optional dependency of fedbus: "
            "pip install 'fedbus[demo]'"
        ) from exc


class SklearnAdapter:
    """Wrap a scikit-learn linear model that supports ``partial_fit`` as a :class:`Learner`.

    The adapter trains a *clone* of ``estimator`` (same parameters, no fitted
    state), reachable as ``adapter.estimator``; the caller's object is never
    touched. Classifiers need ``classes``, which must be the integers
    ``0 .. k-1`` (k >= 2), the labels fedbus classifiers use, so that column j
    of ``W`` means class j on every node. Weights start at zero, like
    fedbus's own linear learners and the aggregator's initial model.

    Learning rate: ``fit``'s ``lr`` is **ignored**. scikit-learn's SGD has its
    own schedule (``learning_rate``, ``eta0``, ``alpha``, ...), set on the
    estimator, and its step counter ``t_`` carries on across ``fit`` calls:
    ``set_weights`` replaces the weights, not the schedule's position.

    Averaged SGD (``average=True``) is refused: it keeps a second, hidden copy
    of the weights that ``set_weights`` cannot reach.
    """

    def __init__(
        self, estimator: Any, n_features: int, classes: Sequence[int] | None = None
    ) -> None:
        base = _sklearn("sklearn.base")
        if not hasattr(estimator, "partial_fit"):
            raise TypeError(f"{type(estimator).__name__} has no partial_fit to train with")
        if getattr(estimator, "average", False):
            raise ValueError("average=True keeps hidden weights set_weights cannot replace")
        if n_features < 1:
            raise ValueError(f"need n_features >= 1, got {n_features}")
        self.task_kind: TaskKind
        if base.is_classifier(estimator):
            self.classes = _class_labels(classes)
            self.task_kind = "classification"
            n_outputs = 1 if len(self.classes) == 2 else len(self.classes)
            self.layout = "logistic" if n_outputs == 1 else "softmax"
        elif base.is_regressor(estimator):
            if classes is not None:
                raise ValueError("classes are for classifiers; this estimator is a regressor")
            self.classes = ()
            self.task_kind = "regression"
            n_outputs = 1
            self.layout = "linear"
        else:
            raise TypeError(f"{type(estimator).__name__} is neither a classifier nor a regressor")
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.estimator = base.clone(estimator)
        self._allocate()

    def _allocate(self) -> None:
        """Make scikit-learn allocate ``coef_``/``intercept_``, then zero them.

        scikit-learn allocates its weights on the first ``partial_fit`` (which
        for a classifier must name every class) and refuses zero rows, so the
        adapter feeds one all-zero row, then overwrites what that step did:
        weights and intercept back to zero and ``t_`` back to 1.0. That is the
        state scikit-learn itself starts its first real step from.
        """
        row = np.zeros((1, self.n_features), dtype=np.float64)
        if self.task_kind == "classification":
            classes = np.array(self.classes, dtype=np.int64)
            self.estimator.partial_fit(row, classes[:1], classes=classes)
        else:
            self.estimator.partial_fit(row, np.zeros(1, dtype=np.float64))
        if not (hasattr(self.estimator, "coef_") and hasattr(self.estimator, "intercept_")):
            raise TypeError(
                f"{type(self.estimator).__name__} is not a linear model: no coef_/intercept_"
            )
        if hasattr(self.estimator, "t_"):  # SGD's step counter drives its schedule
            self.estimator.t_ = 1.0
        self.set_weights(
            {name: np.zeros(shape, np.float32) for name, (shape, _) in self.weight_spec().items()}
        )

    def weight_spec(self) -> WeightSpec:
        """``{"W": ((n_features, n_outputs), "float32"), "b": ((n_outputs,), "float32")}``."""
        return {
            "W": ((self.n_features, self.n_outputs), "float32"),
            "b": ((self.n_outputs,), "float32"),
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        """``coef_`` and ``intercept_`` in fedbus's layout, as new float32 arrays."""
        coef = np.atleast_2d(self.estimator.coef_)  # (n_outputs, n_features)
        return {
            "W": np.array(coef.T, dtype=np.float32, order="C"),
            "b": np.array(self.estimator.intercept_, dtype=np.float32).reshape(self.n_outputs),
        }

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Write ``W``/``b`` into ``coef_``/``intercept_``, checked first like every learner.

        The estimator gets new float64 arrays (scikit-learn's working dtype
        here) shaped as it allocated them.
        """
        copies = checked_copies(weights, self.weight_spec())
        coef = np.ascontiguousarray(copies["W"].T, dtype=np.float64)
        self.estimator.coef_ = coef[0].copy() if self.task_kind == "regression" else coef
        self.estimator.intercept_ = copies["b"].astype(np.float64)

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
        """``epochs`` passes of ``partial_fit`` over minibatches of rows in ``rng``'s order.

        Each epoch visits the rows in ``rng.permutation(len(X))`` in batches
        of ``batch_size``. ``lr`` is unused (see the class docstring). X and y
        are only read: each batch is a fresh float64 copy. scikit-learn also
        shuffles inside each batch, from the estimator's ``random_state``:
        give it an int for replayable runs.

        Returns ``evaluate(X, y)["loss"]`` after training: ``partial_fit``
        reports no loss, so this is the final model's loss on the training
        rows rather than a mean over the epoch's batches.
        """
        check_epochs(epochs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        features = self._features(X)
        targets = self._targets(y, len(features))
        for _ in range(epochs):
            order = rng.permutation(len(features))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                self.estimator.partial_fit(features[rows], targets[rows])
        return self.evaluate(X, y)["loss"]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class labels as int64, or regression values as float32, shape (rows,)."""
        return self._predict_rows(self._features(X))

    def _predict_rows(self, features: np.ndarray) -> np.ndarray:
        dtype = np.int64 if self.task_kind == "classification" else np.float32
        if len(features) == 0:
            return np.empty(0, dtype=dtype)  # scikit-learn refuses zero rows
        return np.asarray(self.estimator.predict(features), dtype=dtype)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities in the layout's convention, float32.

        Binary: ``P(y = 1)``, shape (rows,), as LogisticRegression gives it;
        k classes: (rows, k). Only estimators that give probabilities
        (``loss="log_loss"`` or ``"modified_huber"``) have them; others raise
        AttributeError.
        """
        if not hasattr(self.estimator, "predict_proba"):
            raise AttributeError(
                f"{type(self.estimator).__name__} gives no probabilities with these settings "
                "(e.g. use loss='log_loss')"
            )
        features = self._features(X)
        if len(features) == 0:
            proba = np.empty((0, len(self.classes)), dtype=np.float32)
        else:
            proba = np.asarray(self.estimator.predict_proba(features), dtype=np.float32)
        return np.ascontiguousarray(proba[:, 1]) if len(self.classes) == 2 else proba

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Classifiers: ``accuracy`` and ``loss``; regressors: ``loss`` (MSE), ``rmse``, ``r2``.

        A classifier's ``loss`` is the mean log-loss of its probabilities when
        it has them, otherwise the mean hinge loss of its decision function (a
        margin loss every linear classifier has, though not necessarily the
        one it was trained on). Regression metrics are LinearRegression's,
        computed by the same function. With no rows every metric is 0.0.
        """
        features = self._features(X)
        targets = self._targets(y, len(features))
        predictions = self._predict_rows(features)
        if self.task_kind == "regression":
            return regression_metrics(targets.reshape(-1, 1), predictions.reshape(-1, 1))
        if len(features) == 0:
            return {"accuracy": 0.0, "loss": 0.0}
        metrics = _sklearn("sklearn.metrics")
        labels = list(self.classes)
        if hasattr(self.estimator, "predict_proba"):
            proba = self.estimator.predict_proba(features)
            loss = metrics.log_loss(targets, proba, labels=labels)
        else:
            decision = self.estimator.decision_function(features)
            loss = metrics.hinge_loss(targets, decision, labels=labels)
        return {"accuracy": accuracy(predictions, targets), "loss": float(loss)}

    def _features(self, X: np.ndarray) -> np.ndarray:
        """X as a new float64 (rows, n_features) array; scikit-learn never sees the caller's."""
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != self.n_features:
            shape = X.shape if isinstance(X, np.ndarray) else type(X).__name__
            raise ValueError(f"X must be a (rows, {self.n_features}) numpy array, got {shape}")
        return np.array(X, dtype=np.float64, order="C", copy=True)

    def _targets(self, y: np.ndarray, n_rows: int) -> np.ndarray:
        """y as 1-D: int64 labels among ``classes`` for a classifier, float64 values otherwise.

        scikit-learn would quietly count a label outside ``classes`` as "not
        the positive class"; here it is an error, as in the fedbus kernels.
        """
        if not isinstance(y, np.ndarray) or y.shape != (n_rows,):
            shape = y.shape if isinstance(y, np.ndarray) else type(y).__name__
            raise ValueError(f"y must be a ({n_rows},) numpy array, got {shape}")
        if self.task_kind == "regression":
            return np.array(y, dtype=np.float64, copy=True)
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"class labels must be integers, got {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}), got range [{y.min()}, {y.max()}]"
            )
        return np.array(y, dtype=np.int64, copy=True)


def _class_labels(classes: Sequence[int] | None) -> tuple[int, ...]:
    """``classes`` checked to be ``0 .. k-1`` with k >= 2."""
    if classes is None:
        raise ValueError("a classifier needs classes=, e.g. classes=[0, 1]")
    try:
        labels = tuple(operator.index(c) for c in classes)
    except TypeError:
        labels = ()
    if len(labels) < 2 or labels != tuple(range(len(labels))):
        raise ValueError(f"classes must be 0 .. k-1 with k >= 2, got {list(classes)}")
    return labels
