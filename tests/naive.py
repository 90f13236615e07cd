"""Slow, obvious numpy references for every kernel in ``fedbus.kernels``.

These are written for reading, not speed: whole-matrix formulas in float64,
one line per textbook step. Kernel tests compare against them.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np


def softmax_proba(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``softmax(X @ W + b)`` row by row, in float64."""
    logits = X.astype(np.float64) @ W.astype(np.float64) + b.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to W and b, in float64."""
    n = X.shape[0]
    if n == 0:
        return 0.0, np.zeros(W.shape), np.zeros(b.shape)
    logits = X.astype(np.float64) @ W.astype(np.float64) + b.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    loss = float(np.mean(log_norm - logits[np.arange(n), y]))
    residual = softmax_proba(X, W, b)
    residual[np.arange(n), y] -= 1.0
    return loss, X.astype(np.float64).T @ residual / n, residual.sum(axis=0) / n


def softmax_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    lr: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The epoch as a plain Python loop; returns (mean batch loss, new W, new b)."""
    W = W.astype(np.float64)
    b = b.astype(np.float64)
    losses = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        loss, grad_W, grad_b = softmax_cross_entropy_grad(X[rows], y[rows], W, b)
        losses.append(loss)
        W -= lr * grad_W
        b -= lr * grad_b
    return (float(np.mean(losses)) if losses else 0.0), W, b
