"""Slow, obvious numpy references for the sparsify, norms and optimizer kernels.

Kept apart from ``naive.py`` (softmax). Written for reading: a stable sort
for top-k, float64 for every formula, one line per textbook step.
"""

from __future__ import annotations

import math

import numpy as np


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest |values| in ascending order; ties to the lower position.

    ``np.lexsort`` orders by class (NaN, then infinity, then finite), then by
    descending magnitude, then by position, which is the kernel's documented order.
    """
    n = len(values)
    k = max(0, min(k, n))
    magnitude = np.abs(values.astype(np.float64))
    kind = np.select([np.isnan(magnitude), np.isinf(magnitude)], [2, 1], 0)
    finite = np.where(np.isfinite(magnitude), magnitude, 0.0)
    order = np.lexsort((np.arange(n), -finite, -kind))
    return np.sort(order[:k]).astype(np.uint32)


def topk_with_feedback(
    delta: np.ndarray, residual: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, sent, new residual) without touching the inputs."""
    corrected = (delta + residual).astype(np.float32)  # float32 sum, as on the node
    indices = topk_indices(corrected, k)
    sent = corrected[indices]
    left = corrected.copy()
    left[indices] = 0.0
    return indices, sent, left


def scatter_accumulate(
    acc: np.ndarray, coefficient: float, indices: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """New float32 accumulator: acc[indices] += float32(coefficient) * values, in float32."""
    out = acc.copy()
    out[indices.astype(np.int64)] += np.float32(coefficient) * values
    return out


def l2_norm(values: np.ndarray) -> float:
    return math.sqrt(float(np.sum(values.astype(np.float64) ** 2)))


def sgd_momentum_step(
    w: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """(new w, new velocity) in float64."""
    velocity = momentum * velocity.astype(np.float64) + grad
    return w - lr * velocity, velocity


def adaptive_step(
    w: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    hyper: tuple[float, float, float, float],
    step: int,
    yogi: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new w, new m, new v) of Adam or Yogi in float64, bias correction in the step size."""
    lr, beta1, beta2, eps = hyper
    g = grad.astype(np.float64)
    m = beta1 * m.astype(np.float64) + (1 - beta1) * g
    v = v.astype(np.float64)
    v = v - (1 - beta2) * g**2 * np.sign(v - g**2) if yogi else beta2 * v + (1 - beta2) * g**2
    rate = lr * np.sqrt(1 - beta2**step) / (1 - beta1**step)
    return w - rate * m / (np.sqrt(v) + eps), m, v
