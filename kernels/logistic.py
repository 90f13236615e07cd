"""Binary logistic regression: log-loss, gradient, SGD epoch, probabilities.

The model is ``z = X @ W + b`` with ``W`` of shape (n_features, 1) and ``b`` of
shape (1,), all float32, and ``P(y = 1 | x) = sigmoid(z)``. Labels are int64
0 or 1, the same dtype as the class indices of the softmax and MLP kernels, so
a learner can switch between them without converting its labels.

The loss of one row is ``softplus(-z)`` for label 1 and ``softplus(z)`` for
label 0, evaluated as ``max(t, 0) + log1p(exp(-|t|))``, which never
overflows: a logit of 1e4 on the wrong side costs exactly 1e4. The sigmoid is
evaluated on the side where ``exp`` cannot overflow. The loss is averaged over
rows; its gradient with respect to ``z`` is ``sigmoid(z) - y``.

Private ``_kernel`` functions run under numba and trust their inputs; the
public wrappers check dtype, shape, layout and labels first and raise
:class:`~fedbus.broker.errors.KernelInputError`.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import math
import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["logistic_log_loss_grad", "logistic_predict_proba", "logistic_sgd_epoch"]


@njit(**JIT_OPTIONS)
def _logit_kernel(x, W, b):
    """``x @ W[:, 0] + b[0]`` for one row ``x``."""
    z = b[0]
    for j in range(W.shape[0]):
        z += x[j] * W[j, 0]
    return z


@njit(**JIT_OPTIONS)
def _sigmoid_kernel(z):
    """``1 / (1 + exp(-z))`` without overflow for any finite or infinite z."""
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@njit(**JIT_OPTIONS)
def _softplus_kernel(t):
    """``log(1 + exp(t))`` in float64 without overflow."""
    t = np.float64(t)
    return max(t, 0.0) + np.log1p(np.exp(-abs(t)))


@njit(**JIT_OPTIONS)
def _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b):
    """Mean log-loss over ``X[rows]``; its gradient goes into grad_W, grad_b.

    Returns 0.0 for an empty ``rows``.
    """
    grad_W[:, :] = 0.0
    grad_b[:] = 0.0
    if rows.shape[0] == 0:
        return 0.0
    total = 0.0  # float64: the loss sum over a batch should not lose digits
    for r in rows:
        x = X[r]
        z = _logit_kernel(x, W, b)
        if y[r] == 1:
            total += _softplus_kernel(-z)
            dz = _sigmoid_kernel(z) - 1.0
        else:
            total += _softplus_kernel(z)
            dz = _sigmoid_kernel(z)
        for j in range(W.shape[0]):
            grad_W[j, 0] += x[j] * dz
        grad_b[0] += dz
    scale = 1.0 / rows.shape[0]
    grad_W *= scale
    grad_b *= scale
    return total / rows.shape[0]


@njit(**JIT_OPTIONS)
def _sgd_epoch_kernel(X, y, W, b, order, batch_size, lr):
    """Minibatch SGD over ``order`` in place on W, b; returns the mean batch loss."""
    grad_W = np.empty(W.shape, dtype=W.dtype)
    grad_b = np.empty(b.shape, dtype=b.dtype)
    step = np.float32(lr)
    total = 0.0
    n_batches = 0
    for start in range(0, order.shape[0], batch_size):
        rows = order[start : start + batch_size]
        total += _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b)
        for j in range(W.shape[0]):
            W[j, 0] -= step * grad_W[j, 0]
        b[0] -= step * grad_b[0]
        n_batches += 1
    if n_batches == 0:
        return 0.0
    return total / n_batches


@njit(**JIT_OPTIONS)
def _predict_proba_kernel(X, W, b, out):
    """``P(y = 1)`` for every row of X into ``out`` (n_rows,)."""
    for r in range(X.shape[0]):
        out[r] = _sigmoid_kernel(_logit_kernel(X[r], W, b))


def _check_array(name: str, a: object, dtype: type, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise KernelInputError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise KernelInputError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise KernelInputError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def _check_model(X: object, W: object, b: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = _check_array("X", X, np.float32, 2)
    W = _check_array("W", W, np.float32, 2)
    b = _check_array("b", b, np.float32, 1)
    if W.shape[1] != 1:
        raise KernelInputError(f"W must have shape (n_features, 1), got {W.shape}")
    if b.shape != (1,):
        raise KernelInputError(f"b must have shape (1,), got {b.shape}")
    if X.shape[1] != W.shape[0]:
        raise KernelInputError(
            f"X has {X.shape[1]} features but W expects {W.shape[0]} (W shape {W.shape})"
        )
    return X, W, b


def _check_labels(y: object, n_rows: int) -> np.ndarray:
    y = _check_array("y", y, np.int64, 1)
    if y.shape[0] != n_rows:
        raise KernelInputError(f"y has {y.shape[0]} entries, X has {n_rows} rows")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise KernelInputError(f"y labels must be 0 or 1, got range [{y.min()}, {y.max()}]")
    return y


def _check_epoch_arguments(
    W: np.ndarray, b: np.ndarray, batch_size: object, lr: object, rng: object
) -> tuple[int, float, np.random.Generator]:
    if not (W.flags.writeable and b.flags.writeable):
        raise KernelInputError("W and b must be writeable: the epoch updates them in place")
    try:
        size = operator.index(batch_size)  # type: ignore[arg-type]
    except TypeError:
        raise KernelInputError(f"batch_size must be an int, got {batch_size!r}") from None
    if size < 1:
        raise KernelInputError(f"batch_size must be at least 1, got {size}")
    try:
        rate = float(lr)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KernelInputError(f"lr must be a number, got {lr!r}") from None
    if not math.isfinite(rate):
        raise KernelInputError(f"lr must be finite, got {rate}")
    if not isinstance(rng, np.random.Generator):
        raise KernelInputError(
            f"rng must be a numpy Generator (np.random.default_rng), got {type(rng).__name__}"
        )
    return size, rate, rng


def logistic_log_loss_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean log-loss of labels ``y`` (int64, 0 or 1) under the model, and its gradient.

    Returns ``(loss, grad_W, grad_b)`` with the shapes of W and b; zero rows
    give loss 0 and zero gradients.
    """
    X, W, b = _check_model(X, W, b)
    y = _check_labels(y, X.shape[0])
    grad_W = np.empty_like(W)
    grad_b = np.empty_like(b)
    rows = np.arange(X.shape[0], dtype=np.int64)
    loss = _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b)
    return float(loss), grad_W, grad_b


def logistic_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> float:
    """One epoch of minibatch SGD on the mean log-loss, updating W and b in place.

    Rows are visited in the order ``rng.permutation(len(X))`` (one draw from
    ``rng`` per epoch, so a seeded generator gives the same epoch bit for bit)
    in consecutive batches of ``batch_size``, the last one possibly smaller.
    Each batch takes the step ``-lr * gradient of its mean loss``. Returns the
    mean of the batch losses, each measured before its own step (0.0 when X
    has no rows).
    """
    X, W, b = _check_model(X, W, b)
    y = _check_labels(y, X.shape[0])
    batch_size, lr, rng = _check_epoch_arguments(W, b, batch_size, lr, rng)
    order = rng.permutation(X.shape[0]).astype(np.int64, copy=False)
    return float(_sgd_epoch_kernel(X, y, W, b, order, batch_size, lr))


def logistic_predict_proba(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``P(y = 1 | x)`` for every row, shape (n_rows,) float32, each in [0, 1]."""
    X, W, b = _check_model(X, W, b)
    out = np.empty(X.shape[0], dtype=np.float32)
    _predict_proba_kernel(X, W, b, out)
    return out
