"""Linear regression under squared error: loss, gradient, SGD epoch, prediction.

The model is ``predictions = X @ W + b`` with ``W`` of shape (n_features,
n_targets) and ``b`` of shape (n_targets,), all float32. Targets ``y`` are
float32, shape (n_rows, n_targets), or (n_rows,) when there is one target.

The loss is the mean over rows of half the squared error summed over targets::

    loss = (1 / n_rows) * sum_r 0.5 * ||X[r] @ W + b - y[r]||^2

so the gradient is ``X.T @ residual / n_rows`` for W and the mean residual for
b, with no stray factor 2; with one target this is half the usual MSE.

Private ``_kernel`` functions run under numba and trust their inputs; the
public wrappers check dtype, shape and layout first and raise
:class:`~fedbus.broker.errors.KernelInputError`.
"""

# X (data matrix), W (weights) and Y (2-D targets) are the field's own names.

from __future__ import annotations

import math
import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["linear_mse_grad", "linear_predict", "linear_sgd_epoch"]


@njit(**JIT_OPTIONS)
def _row_predict_kernel(x, W, b, out):
    """Write ``x @ W + b`` for one row ``x`` into ``out`` (n_targets,)."""
    out[:] = b
    for j in range(W.shape[0]):
        xj = x[j]
        for c in range(W.shape[1]):
            out[c] += xj * W[j, c]


@njit(**JIT_OPTIONS)
def _batch_loss_grad_kernel(X, Y, rows, W, b, grad_W, grad_b, residual):
    """Mean half squared error over ``X[rows]``; its gradient goes into grad_W, grad_b.

    ``residual`` is an (n_targets,) scratch buffer, passed in so that the SGD
    loop allocates nothing per batch. Returns 0.0 for an empty ``rows``.
    """
    grad_W[:, :] = 0.0
    grad_b[:] = 0.0
    if rows.shape[0] == 0:
        return 0.0
    total = 0.0  # float64: the loss sum over a batch should not lose digits
    for r in rows:
        x = X[r]
        _row_predict_kernel(x, W, b, residual)
        for c in range(residual.shape[0]):
            residual[c] -= Y[r, c]
            total += 0.5 * np.float64(residual[c]) * np.float64(residual[c])
        for j in range(W.shape[0]):
            xj = x[j]
            for c in range(W.shape[1]):
                grad_W[j, c] += xj * residual[c]
        grad_b += residual
    scale = 1.0 / rows.shape[0]
    grad_W *= scale
    grad_b *= scale
    return total / rows.shape[0]


@njit(**JIT_OPTIONS)
def _sgd_epoch_kernel(X, Y, W, b, order, batch_size, lr):
    """Minibatch SGD over ``order`` in place on W, b; returns the mean batch loss."""
    grad_W = np.empty(W.shape, dtype=W.dtype)
    grad_b = np.empty(b.shape, dtype=b.dtype)
    residual = np.empty(b.shape, dtype=b.dtype)
    step = np.float32(lr)
    total = 0.0
    n_batches = 0
    for start in range(0, order.shape[0], batch_size):
        rows = order[start : start + batch_size]
        total += _batch_loss_grad_kernel(X, Y, rows, W, b, grad_W, grad_b, residual)
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
def _predict_kernel(X, W, b, out):
    """Predictions for every row of X into ``out`` (n_rows, n_targets)."""
    for r in range(X.shape[0]):
        _row_predict_kernel(X[r], W, b, out[r])


def _check_array(name: str, a: object, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise KernelInputError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise KernelInputError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise KernelInputError(f"{name} must be {wanted}, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def _check_model(X: object, W: object, b: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = _check_array("X", X, (2,))
    W = _check_array("W", W, (2,))
    b = _check_array("b", b, (1,))
    n_features, n_targets = W.shape
    if n_targets < 1:
        raise KernelInputError(f"W must have at least one target column, got shape {W.shape}")
    if b.shape != (n_targets,):
        raise KernelInputError(f"b must have shape ({n_targets},) to match W, got {b.shape}")
    if X.shape[1] != n_features:
        raise KernelInputError(
            f"X has {X.shape[1]} features but W expects {n_features} (W shape {W.shape})"
        )
    return X, W, b


def _check_targets(y: object, n_rows: int, n_targets: int) -> np.ndarray:
    """``y`` as a 2-D (n_rows, n_targets) view; a 1-D ``y`` needs n_targets == 1."""
    y = _check_array("y", y, (1, 2))
    if y.ndim == 1:
        if n_targets != 1:
            raise KernelInputError(
                f"y is 1-D but W has {n_targets} target columns; pass y of shape "
                f"({n_rows}, {n_targets})"
            )
        y = y.reshape(-1, 1)
    if y.shape != (n_rows, n_targets):
        raise KernelInputError(
            f"y must have shape ({n_rows}, {n_targets}) to match X and W, got {y.shape}"
        )
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


def linear_mse_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean half squared error of ``y`` under the model, and its gradient.

    Returns ``(loss, grad_W, grad_b)`` with the shapes of W and b; zero rows
    give loss 0 and zero gradients.
    """
    X, W, b = _check_model(X, W, b)
    Y = _check_targets(y, X.shape[0], W.shape[1])
    grad_W = np.empty_like(W)
    grad_b = np.empty_like(b)
    residual = np.empty_like(b)
    rows = np.arange(X.shape[0], dtype=np.int64)
    loss = _batch_loss_grad_kernel(X, Y, rows, W, b, grad_W, grad_b, residual)
    return float(loss), grad_W, grad_b


def linear_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> float:
    """One epoch of minibatch SGD on the mean half squared error, updating W, b in place.

    Rows are visited in the order ``rng.permutation(len(X))`` (one draw from
    ``rng`` per epoch, so a seeded generator gives the same epoch bit for bit)
    in consecutive batches of ``batch_size``, the last one possibly smaller.
    Each batch takes the step ``-lr * gradient of its mean loss``. Returns the
    mean of the batch losses, each measured before its own step (0.0 when X
    has no rows).
    """
    X, W, b = _check_model(X, W, b)
    Y = _check_targets(y, X.shape[0], W.shape[1])
    batch_size, lr, rng = _check_epoch_arguments(W, b, batch_size, lr, rng)
    order = rng.permutation(X.shape[0]).astype(np.int64, copy=False)
    return float(_sgd_epoch_kernel(X, Y, W, b, order, batch_size, lr))


def linear_predict(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Predictions ``X @ W + b``, shape (n_rows, n_targets) float32 (2-D even for one target)."""
    X, W, b = _check_model(X, W, b)
    out = np.empty((X.shape[0], W.shape[1]), dtype=np.float32)
    _predict_kernel(X, W, b, out)
    return out
