"""The reference task's data: digits-20 (BENCH-TASK.md), built exactly to the spec.

Comparisons with other federated-learning systems only mean something if every
system trains on the same rows in the same split, so nothing here is a knob.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["ReferenceTask", "load_digits_task"]

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
