"""Slow, obvious numpy references for the linear, logistic and MLP kernels.

Written for reading, not speed: whole-matrix formulas in float64, one line per
textbook step, like ``tests/naive.py``. The SGD epochs take the visiting
order explicitly; the kernels' wrappers draw it as ``rng.permutation(n)``.
"""

# X (data matrix), W (weights) and Y (2-D targets) are the field's own names.

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Layers = Sequence[tuple[np.ndarray, np.ndarray]]
LossGrad = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray, np.ndarray]
]


def _f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


# Linear regression, loss = mean over rows of 0.5 * ||x W + b - y||^2


def linear_mse_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean half squared error and its gradient with respect to W and b, in float64."""
    X, Y, W, b = _f64(X, y, W, b)
    n = X.shape[0]
    if n == 0:
        return 0.0, np.zeros(W.shape), np.zeros(b.shape)
    residual = X @ W + b - Y.reshape(n, -1)
    loss = float(0.5 * np.sum(residual**2) / n)
    return loss, X.T @ residual / n, residual.sum(axis=0) / n


def linear_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The epoch as a plain Python loop; returns (mean batch loss, new W, new b)."""
    return _sgd_epoch(linear_mse_grad, X, y, W, b, order, batch_size, lr)


# Binary logistic regression, labels 0/1


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` written through tanh, which cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic_proba(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``P(y = 1)`` per row, shape (n_rows,), in float64."""
    X, W, b = _f64(X, W, b)
    return sigmoid((X @ W + b)[:, 0])


def logistic_log_loss_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean log-loss and its gradient with respect to W (d, 1) and b (1,), in float64."""
    X, W, b = _f64(X, W, b)
    n = X.shape[0]
    if n == 0:
        return 0.0, np.zeros(W.shape), np.zeros(b.shape)
    z = (X @ W + b)[:, 0]
    t = np.asarray(y, dtype=np.float64)
    # -[t log s(z) + (1 - t) log(1 - s(z))] = log(1 + e^z) - t z
    loss = float(np.mean(np.logaddexp(0.0, z) - t * z))
    dz = sigmoid(z) - t
    return loss, (X.T @ dz / n)[:, None], np.array([dz.mean()])


def logistic_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The epoch as a plain Python loop; returns (mean batch loss, new W, new b)."""
    return _sgd_epoch(logistic_log_loss_grad, X, y, W, b, order, batch_size, lr)


# MLP: ReLU hidden layers, softmax cross-entropy output


def _mlp_activations(X: np.ndarray, layers: Layers) -> tuple[list[np.ndarray], np.ndarray]:
    """Inputs of every layer (X first) and the output logits, in float64."""
    h = np.asarray(X, dtype=np.float64)
    inputs = []
    for i, (W, b) in enumerate(layers):
        inputs.append(h)
        z = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        h = np.maximum(z, 0.0) if i < len(layers) - 1 else z
    return inputs, h


def mlp_proba(X: np.ndarray, layers: Layers) -> np.ndarray:
    """``softmax`` of the network's logits, row by row, in float64."""
    _, logits = _mlp_activations(X, layers)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mlp_loss_grad(
    X: np.ndarray, y: np.ndarray, layers: Layers
) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """Mean cross-entropy and the gradient of every (W_i, b_i), by backpropagation."""
    n = X.shape[0]
    if n == 0:
        return 0.0, [(np.zeros(W.shape), np.zeros(b.shape)) for W, b in layers]
    inputs, logits = _mlp_activations(X, layers)
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    loss = float(np.mean(log_norm - logits[np.arange(n), y]))
    delta = mlp_proba(X, layers)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads = []
    for (W, _), h in zip(reversed(layers), reversed(inputs), strict=True):
        grads.append((h.T @ delta, delta.sum(axis=0)))
        delta = (delta @ np.asarray(W, np.float64).T) * (h > 0)
    return loss, grads[::-1]


def mlp_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    layers: Layers,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """The epoch as a plain Python loop; returns (mean batch loss, new layers)."""
    current = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in layers]
    losses = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        loss, grads = mlp_loss_grad(X[rows], y[rows], current)
        losses.append(loss)
        current = [
            (W - lr * gW, b - lr * gb) for (W, b), (gW, gb) in zip(current, grads, strict=True)
        ]
    return (float(np.mean(losses)) if losses else 0.0), current


def _sgd_epoch(
    loss_grad: LossGrad,
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    W, b = _f64(W, b)
    losses = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        loss, grad_W, grad_b = loss_grad(X[rows], y[rows], W, b)
        losses.append(loss)
        W = W - lr * grad_W
        b = b - lr * grad_b
    return (float(np.mean(losses)) if losses else 0.0), W, b
