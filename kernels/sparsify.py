"""Top-k sparsification with error feedback, and the aggregator's sparse accumulate.

A node sends only the k entries of largest magnitude of `delta + residual`
and keeps the rest as the new residual (Lin et al., Deep Gradient
Compression, 2018; Karimireddy et al., error feedback, 2019): nothing is
dropped, only delayed, and `sent + residual == delta + old residual` holds
element for element. The aggregator adds the kept values into its buffer at
their positions, after checking every position, since they come off the wire.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["scatter_accumulate", "topk_indices", "topk_with_feedback"]


@njit(**JIT_OPTIONS)
def _add_kernel(delta, residual):
    for i in range(delta.shape[0]):
        residual[i] += delta[i]


@njit(**JIT_OPTIONS)
def _take_kernel(residual, indices, sent):
    for j in range(indices.shape[0]):
        i = indices[j]
        sent[j] = residual[i]
        residual[i] = np.float32(0.0)


@njit(**JIT_OPTIONS)
def _scatter_kernel(acc, coefficient, indices, values):
    a = np.float32(coefficient)
    for j in range(indices.shape[0]):
        acc[indices[j]] += a * values[j]


def _vector(name: str, array: np.ndarray, dtype: type) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
        raise KernelInputError(f"{name} must be a 1-D {np.dtype(dtype).name} array")
    if not array.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Positions (uint32, ascending) of the k entries of largest magnitude.

    Selection is O(n) (introselect); k is clipped to [0, n].
    """
    _vector("values", values, np.float32)
    n = values.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.empty(0, dtype=np.uint32)
    if k == n:
        return np.arange(n, dtype=np.uint32)
    chosen = np.argpartition(np.abs(values), n - k)[n - k :]
    return np.sort(chosen).astype(np.uint32)


def topk_with_feedback(
    delta: np.ndarray, residual: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, sent values) of the top k of delta + residual; residual keeps the rest.

    `residual` is updated in place to delta + residual with the sent entries
    zeroed; `delta` is not modified.
    """
    _vector("delta", delta, np.float32)
    _vector("residual", residual, np.float32)
    if delta.shape != residual.shape:
        raise KernelInputError(f"delta {delta.shape} and residual {residual.shape} differ")
    _add_kernel(delta, residual)
    indices = topk_indices(residual, k)
    sent = np.empty(indices.shape[0], dtype=np.float32)
    _take_kernel(residual, indices, sent)
    return indices, sent


def scatter_accumulate(
    acc: np.ndarray, coefficient: float, indices: np.ndarray, values: np.ndarray
) -> None:
    """acc[indices] += float32(coefficient) * values, after checking every index."""
    _vector("acc", acc, np.float32)
    _vector("indices", indices, np.uint32)
    _vector("values", values, np.float32)
    if indices.shape != values.shape:
        raise KernelInputError(f"{indices.shape[0]} indices for {values.shape[0]} values")
    if indices.size:
        if int(indices[-1]) >= acc.shape[0] or int(indices.max()) >= acc.shape[0]:
            raise KernelInputError(f"an index is out of range for {acc.shape[0]} elements")
        if indices.size > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise KernelInputError("indices must be strictly increasing")
    _scatter_kernel(acc, coefficient, indices, values)
