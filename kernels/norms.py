"""L2 norm (float64 accumulation) and clipping by norm, for float32 vectors.

The norm bounds updates (validation, robust aggregation); clipping scales a
vector down to a norm in place (differential privacy, robust modes). Squares
are summed in float64: a float32 sum overflows once one finite value exceeds
about 1.8e19 and loses digits on long vectors, while the float64 sum of
squares of finite float32 values stays below 1.2e77 per element and cannot
overflow for any array that fits in memory.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["clip_by_norm", "clip_within", "l2_norm", "sum_of_squares"]


_LANES = 16
"""Independent float64 partial sums: a fixed split, so the sum is the same on
every machine and without the JIT, yet the compiler can keep the lanes in
vector registers (one running sum serialises every add on the previous one)."""


@njit(**JIT_OPTIONS)
def _sum_of_squares_kernel(values):
    """Element i goes to lane i mod 16; lanes are added in order, then the tail."""
    n = values.shape[0]
    whole = n - n % _LANES
    lanes = np.zeros(_LANES, dtype=np.float64)
    for start in range(0, whole, _LANES):
        chunk = values[start : start + _LANES]
        for k in range(_LANES):
            x = np.float64(chunk[k])
            lanes[k] += x * x
    total = 0.0
    for k in range(_LANES):
        total += lanes[k]
    for i in range(whole, n):
        x = np.float64(values[i])
        total += x * x
    return total


@njit(**JIT_OPTIONS)
def _scale_kernel(values, factor):
    """values *= factor, each product formed in float64 and rounded once to float32."""
    for i in range(values.shape[0]):
        values[i] = np.float32(np.float64(values[i]) * factor)


def _vector(values: object, writeable: bool = False) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise KernelInputError(f"values must be a numpy array, got {type(values).__name__}")
    if values.dtype != np.float32:
        raise KernelInputError(f"values must have dtype float32, got {values.dtype}")
    if values.ndim != 1:
        raise KernelInputError(f"values must be 1-D, got shape {values.shape}")
    if not values.flags.c_contiguous:
        raise KernelInputError("values must be C-contiguous (use np.ascontiguousarray)")
    if writeable and not values.flags.writeable:
        raise KernelInputError("values must be writeable: clipping scales it in place")
    return values


def sum_of_squares(values: np.ndarray) -> float:
    """``sum(x**2)`` in float64 lanes (read-only input is fine; nothing is copied).

    NaN or inf exactly when an element is: the square of a finite float32 is
    finite in float64. What the aggregator checks updates with.
    """
    return float(_sum_of_squares_kernel(_vector(values)))


def l2_norm(values: np.ndarray) -> float:
    """``sqrt(sum(x**2))`` with the squares summed in float64.

    Finite input always gives a finite norm; NaN or inf if an element is.
    0.0 for an empty array.
    """
    values = _vector(values)
    return math.sqrt(_sum_of_squares_kernel(values))


def clip_by_norm(values: np.ndarray, max_norm: float) -> float:
    """Scale ``values`` in place so that its L2 norm is at most ``max_norm``.

    Returns the factor applied: ``max_norm / norm`` when the norm exceeds
    ``max_norm``, else 1.0 and ``values`` is left untouched. Each element is
    rounded to float32 once, so the new norm is ``max_norm`` to within a
    relative 2**-24 (plus float32 underflow when the factor is tiny).
    Raises :class:`~fedbus.broker.errors.KernelInputError` for a negative or
    non-finite ``max_norm`` and for non-finite values, before any change.
    """
    values = _vector(values, writeable=True)
    if not isinstance(max_norm, numbers.Real):
        raise KernelInputError(f"max_norm must be a real number, got {max_norm!r}")
    limit = float(max_norm)
    if not (math.isfinite(limit) and limit >= 0):
        raise KernelInputError(f"max_norm must be finite and >= 0, got {max_norm}")
    norm = l2_norm(values)
    if not math.isfinite(norm):
        raise KernelInputError("values must be finite to be clipped")
    if norm <= limit:
        return 1.0
    factor = limit / norm
    _scale_kernel(values, factor)
    return factor


def clip_within(values: np.ndarray, max_norm: float) -> float:
    """Scale ``values`` in place so its L2 norm is at most ``max_norm``, never above it.

    `clip_by_norm` lands on the bound to within float32 rounding, which may
    be a hair above; differential privacy needs "at most", so the rare
    overshoot is clipped again to a bound a few ulps lower. Returns the norm
    before clipping.
    """
    norm = l2_norm(values)
    clip_by_norm(values, max_norm)
    target = float(max_norm)
    while l2_norm(values) > max_norm:
        target *= 1.0 - 2.0**-22
        clip_by_norm(values, target)
    return norm
