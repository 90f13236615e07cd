"""L2 norm (float64 accumulation) and clipping by norm, for float32 vectors.

The norm bounds updates (validation, robust aggregation); clipping scales a
vector down to a norm in place (differential privacy, robust modes). Squares
are summed in float64: a float32 sum overflows for finite values above about
1.8e19 and loses digits on long vectors.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["clip_by_norm", "l2_norm"]


@njit(**JIT_OPTIONS)
def _sum_of_squares_kernel(values):
    total = 0.0
    for i in range(values.shape[0]):
        x = np.float64(values[i])
        total += x * x
    return total


@njit(**JIT_OPTIONS)
def _scale_kernel(values, factor):
    f = np.float32(factor)
    for i in range(values.shape[0]):
        values[i] *= f


def _vector(values: np.ndarray) -> None:
    if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 1:
        raise KernelInputError("values must be a 1-D float32 array")
    if not values.flags.c_contiguous:
        raise KernelInputError("values must be C-contiguous (use np.ascontiguousarray)")


def l2_norm(values: np.ndarray) -> float:
    """sqrt(sum(x^2)) accumulated in float64; NaN or inf if an element is."""
    _vector(values)
    return math.sqrt(_sum_of_squares_kernel(values))


def clip_by_norm(values: np.ndarray, max_norm: float) -> float:
    """Scale `values` in place so its L2 norm is at most `max_norm`; returns the factor."""
    _vector(values)
    if not (math.isfinite(max_norm) and max_norm >= 0):
        raise KernelInputError(f"max_norm must be finite and >= 0, got {max_norm}")
    norm = l2_norm(values)
    if not math.isfinite(norm):
        raise KernelInputError("values must be finite")
    if norm <= max_norm:
        return 1.0
    factor = max_norm / norm
    _scale_kernel(values, factor)
    return factor
