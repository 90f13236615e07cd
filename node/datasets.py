"""The reference task's data: digits-20 (BENCH-TASK.md), built exactly to the spec.

Comparisons with other federated-learning systems only mean something if every
system trains on the same rows in the same split, so nothing here is a knob.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedbus.node.learner_metrics import regression_metrics

__all__ = [
    "ReferenceTask",
    "TabularTask",
    "central_linear_baseline",
    "load_diabetes_task",
    "load_digits_task",
]

_SPLIT_SEED = 0
_N_TRAIN = 1437


@dataclass(frozen=True, eq=False)
class ReferenceTask:
    """A train/test split with its shape facts; arrays are read-only and shared.

    ``X_*`` are float32 C-contiguous (rows, n_features); ``y_*`` are int64 labels
    in ``[0, n_classes)``.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int


@functools.lru_cache(maxsize=1)
def load_digits_task() -> ReferenceTask:
    """scikit-learn's digits, standardized over all 1797 samples, split 1437 / 360.

    Each feature is centred and scaled by its mean and (population) std over
    all samples, a std of 0 counting as 1; the result is cast to float32 and
    shuffled with ``np.random.RandomState(0).permutation(1797)``. The first 1437
    rows are the training set, the last 360 the test set.

    The arrays are read-only and the result is cached, so every caller shares
    one copy and none can disturb the others' data.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits reference task needs scikit-learn; install the demo extra: "
            "pip install 'fedbus[demo]'"
        ) from exc

    digits = load_digits()
    data = np.asarray(digits.data, dtype=np.float64)
    mean = data.mean(axis=0)
    std = data.std(axis=0)
    std[std == 0] = 1.0
    X = ((data - mean) / std).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int64)

    order = np.random.RandomState(_SPLIT_SEED).permutation(len(X))
    train, test = order[:_N_TRAIN], order[_N_TRAIN:]
    arrays = [np.ascontiguousarray(a) for a in (X[train], y[train], X[test], y[test])]
    for a in arrays:
        a.setflags(write=False)
    X_train, y_train, X_test, y_test = arrays
    return ReferenceTask(
        name="digits-20",
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        n_features=X.shape[1],
        n_classes=int(y.max()) + 1,
    )


@dataclass(frozen=True, eq=False)
class TabularTask:
    """Raw rows of a demo data set, split for training and testing.

    Unlike the reference task, nothing is standardized here: in a fleet each
    device holds raw sensor or clinic values, and scaling them is the
    preprocessing pipeline's job (with federated normalization). ``X_*`` are
    float64 (rows, features) with NaN for a missing cell; ``y_*`` float64.
    """

    name: str
    kind: str  # "classification" | "regression"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    n_outputs: int


_DIABETES_TRAIN = 354  # 80 % of 442


@functools.lru_cache(maxsize=1)
def load_diabetes_task() -> TabularTask:
    """scikit-learn's diabetes regression data in clinical units, split 354 / 88.

    ``load_diabetes(scaled=False)``: age, sex, BMI, blood pressure and six
    blood serum measurements of 442 patients; the target is a measure of
    disease progression one year later (25 to 346). Rows are shuffled with
    ``np.random.RandomState(0)``; the first 354 train, the rest test.
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as exc:
        raise ImportError(
            "the diabetes data set needs scikit-learn; install the demo extra: "
            "pip install 'fedbus[demo]'"
        ) from exc
    data = load_diabetes(scaled=False)
    X = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.float64)
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(X))
    train, test = order[:_DIABETES_TRAIN], order[_DIABETES_TRAIN:]
    arrays = [np.ascontiguousarray(a) for a in (X[train], y[train], X[test], y[test])]
    for a in arrays:
        a.setflags(write=False)
    return TabularTask(
        name="diabetes",
        kind="regression",
        X_train=arrays[0],
        y_train=arrays[1],
        X_test=arrays[2],
        y_test=arrays[3],
        feature_names=tuple(data.feature_names),
        n_outputs=1,
    )


def central_linear_baseline(task: TabularTask) -> dict[str, float]:
    """R² and RMSE on the test rows of least squares fitted to ALL training rows at once.

    The yardstick a federated run is held against: the best a linear model
    can do with every row in one place (features standardized with the
    pooled training statistics, an intercept, no regularization).
    """
    mean = task.X_train.mean(axis=0)
    std = task.X_train.std(axis=0)
    std[std == 0] = 1.0

    def design(X: np.ndarray) -> np.ndarray:
        return np.column_stack([(X - mean) / std, np.ones(len(X))])

    coef = np.linalg.lstsq(design(task.X_train), task.y_train, rcond=None)[0]
    fit = regression_metrics(
        task.y_test.reshape(-1, 1), (design(task.X_test) @ coef).reshape(-1, 1)
    )
    return {"r2": fit["r2"], "rmse": fit["rmse"]}
