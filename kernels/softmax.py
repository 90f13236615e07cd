"""Softmax (multinomial logistic) regression: loss, gradient, SGD epoch, prediction.

The model is ``logits = X @ W + b`` with ``W`` of shape (n_features, n_classes)
and ``b`` of shape (n_classes,), all float32. Every kernel subtracts the row's
largest logit before exponentiating, so logits of any finite size give finite
losses and probabilities.

Private ``_kernel`` functions run under numba and trust their inputs; the
public wrappers check dtype, shape, layout and label range first and raise
:class:`~fedbus.broker.errors.KernelInputError`, because numba does no bounds
checking and a bad label would otherwise read or write arbitrary memory.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import math
import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["softmax_cross_entropy_grad", "softmax_predict_proba", "softmax_sgd_epoch"]


@njit(**JIT_OPTIONS)
def _row_logits_kernel(x, W, b, out):
    """Write ``x @ W + b`` for one row ``x`` into ``out`` (float32, n_classes)."""
    out[:] = b
    for j in range(W.shape[0]):
        xj = x[j]
        for c in range(W.shape[1]):
            out[c] += xj * W[j, c]


@njit(**JIT_OPTIONS)
def _softmax_inplace_kernel(scores):
    """Turn logits into probabilities in place; return (log-normalizer, max logit)."""
    top = scores.max()
    norm = np.float32(0.0)
    for c in range(scores.shape[0]):
        scores[c] = np.exp(scores[c] - top)
        norm += scores[c]
    for c in range(scores.shape[0]):
        scores[c] /= norm
    return np.log(norm), top


@njit(**JIT_OPTIONS)
def _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b, scores):
    """Mean cross-entropy over ``X[rows]``; its gradient goes into grad_W, grad_b.

    ``scores`` is an (n_classes,) float32 scratch buffer, passed in so that the
    SGD loop allocates nothing per batch. Returns 0.0 for an empty ``rows``.
    """
    grad_W[:, :] = 0.0
    grad_b[:] = 0.0
    if rows.shape[0] == 0:
        return 0.0
    total = 0.0  # float64: the loss sum over a batch should not lose digits
    for r in rows:
        x = X[r]
        label = y[r]
        _row_logits_kernel(x, W, b, scores)
        label_logit = scores[label]
        log_norm, top = _softmax_inplace_kernel(scores)
        total += np.float64(log_norm) + np.float64(top) - np.float64(label_logit)
        scores[label] -= np.float32(1.0)  # d(CE)/d(logits) = p - onehot(y)
        for j in range(W.shape[0]):
            xj = x[j]
            for c in range(W.shape[1]):
                grad_W[j, c] += xj * scores[c]
        grad_b += scores
    scale = np.float32(1.0 / rows.shape[0])
    grad_W *= scale
    grad_b *= scale
    return total / rows.shape[0]


@njit(**JIT_OPTIONS)
def _sgd_epoch_kernel(X, y, W, b, order, batch_size, lr):
    """Minibatch SGD over ``order`` in place on W, b; returns the mean batch loss."""
    grad_W = np.empty(W.shape, dtype=np.float32)
    grad_b = np.empty(b.shape, dtype=np.float32)
    scores = np.empty(b.shape, dtype=np.float32)
    step = np.float32(lr)
    total = 0.0
    n_batches = 0
    for start in range(0, order.shape[0], batch_size):
        rows = order[start : start + batch_size]
        total += _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b, scores)
        for j in range(W.shape[0]):
            for c in range(W.shape[1]):
                W[j, c] -= step * grad_W[j, c]
        for c in range(b.shape[0]):
            b[c] -= step * grad_b[c]
        n_batches += 1
    if n_batches == 0:
        return 0.0
    return total / n_batches


@njit(**JIT_OPTIONS)
def _predict_proba_kernel(X, W, b, out):
    """Class probabilities of every row of X into ``out`` (n_rows, n_classes)."""
    for r in range(X.shape[0]):
        _row_logits_kernel(X[r], W, b, out[r])
        _softmax_inplace_kernel(out[r])


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
    n_features, n_classes = W.shape
    if n_classes < 1:
        raise KernelInputError(f"W must have at least one class column, got shape {W.shape}")
    if b.shape != (n_classes,):
        raise KernelInputError(f"b must have shape ({n_classes},) to match W, got {b.shape}")
    if X.shape[1] != n_features:
        raise KernelInputError(
            f"X has {X.shape[1]} features but W expects {n_features} (W shape {W.shape})"
        )
    return X, W, b


def _check_index(name: str, a: object, n_rows: int, upper: int) -> np.ndarray:
    """An int64 vector of length n_rows (or any length if n_rows < 0) in [0, upper)."""
    a = _check_array(name, a, np.int64, 1)
    if n_rows >= 0 and a.shape[0] != n_rows:
        raise KernelInputError(f"{name} has {a.shape[0]} entries, X has {n_rows} rows")
    if a.size and (a.min() < 0 or a.max() >= upper):
        raise KernelInputError(
            f"{name} values must lie in [0, {upper}), got range [{a.min()}, {a.max()}]"
        )
    return a


def softmax_cross_entropy_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy of labels ``y`` under the model, and its gradient.

    Returns ``(loss, grad_W, grad_b)``; zero rows give loss 0 and zero gradients.
    """
    X, W, b = _check_model(X, W, b)
    y = _check_index("y", y, X.shape[0], W.shape[1])
    grad_W = np.empty_like(W)
    grad_b = np.empty_like(b)
    scores = np.empty_like(b)
    rows = np.arange(X.shape[0], dtype=np.int64)
    loss = _batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b, scores)
    return float(loss), grad_W, grad_b


def softmax_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> float:
    """One epoch of minibatch SGD on the mean cross-entropy, updating W and b in place.

    Rows are visited in ``order`` (normally a permutation of ``range(len(X))``;
    any int64 indices into X are accepted) in consecutive batches of
    ``batch_size``, the last one possibly smaller. Each batch takes the step
    ``-lr * gradient of its mean loss``. Returns the mean of the batch losses,
    each measured before its own step (0.0 if ``order`` is empty).
    """
    X, W, b = _check_model(X, W, b)
    y = _check_index("y", y, X.shape[0], W.shape[1])
    order = _check_index("order", order, -1, X.shape[0])
    if not (W.flags.writeable and b.flags.writeable):
        raise KernelInputError("W and b must be writeable: the epoch updates them in place")
    try:
        batch_size = operator.index(batch_size)
    except TypeError:
        raise KernelInputError(f"batch_size must be an int, got {batch_size!r}") from None
    if batch_size < 1:
        raise KernelInputError(f"batch_size must be at least 1, got {batch_size}")
    lr = float(lr)
    if not math.isfinite(lr):
        raise KernelInputError(f"lr must be finite, got {lr}")
    return float(_sgd_epoch_kernel(X, y, W, b, order, batch_size, lr))


def softmax_predict_proba(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (n_rows, n_classes) float32; each row sums to 1."""
    X, W, b = _check_model(X, W, b)
    out = np.empty((X.shape[0], W.shape[1]), dtype=np.float32)
    _predict_proba_kernel(X, W, b, out)
    return out
