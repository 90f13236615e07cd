"""Slow, obvious numpy references for fedbus.kernels.robust.

Written for reading: ``np.sort`` / ``np.median`` on float64 copies of the
rows, one line per textbook step. The trimmed mean is given twice: summed in
ascending order (the order the kernel documents, so the results must agree
bit for bit) and summed exactly with ``math.fsum`` (the true value, which
the kernel must be within a float32 rounding of).
"""

from __future__ import annotations

import math

import numpy as np


def apply_network(values: np.ndarray, network: np.ndarray) -> np.ndarray:
    """A copy of ``values`` (rows x columns) with each comparator (i, j) applied to every column."""
    out = np.array(values, copy=True)
    for i, j in network:
        low = np.minimum(out[i], out[j])
        high = np.maximum(out[i], out[j])
        out[i], out[j] = low, high
    return out


def coordinate_median(rows: np.ndarray) -> np.ndarray:
    """float32 of numpy's float64 median of each column."""
    return np.median(rows.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean(rows: np.ndarray, trim: int) -> np.ndarray:
    """Sort each column, drop ``trim`` values at each end, sum the rest in float64 in
    ascending order, divide, round once to float32."""
    k = rows.shape[0]
    ordered = np.sort(rows.astype(np.float64), axis=0)
    total = np.zeros(rows.shape[1])
    for row in ordered[trim : k - trim]:
        total += row
    return (total / (k - 2 * trim)).astype(np.float32)


def trimmed_mean_exact(rows: np.ndarray, trim: int) -> np.ndarray:
    """The trimmed mean, each column's kept values summed exactly (``math.fsum``), in float64."""
    k = rows.shape[0]
    ordered = np.sort(rows.astype(np.float64), axis=0)
    kept = ordered[trim : k - trim]
    return np.array([math.fsum(column) for column in kept.T]) / (k - 2 * trim)


def row_mean(rows: np.ndarray) -> np.ndarray:
    """Rows summed in float64 in row order, divided by K, rounded once to float32."""
    total = np.zeros(rows.shape[1])
    for row in rows.astype(np.float64):
        total += row
    return (total / rows.shape[0]).astype(np.float32)
