"""Top-k sparsification with error feedback, and the aggregator's sparse accumulate.

A node sends only the k entries of largest magnitude of ``delta + residual``
and keeps the rest as the new residual (Lin et al., Deep Gradient
Compression, ICLR 2018; Karimireddy et al., "Error Feedback Fixes SignSGD",
ICML 2019): nothing is dropped, only delayed, and ``sent + residual == delta +
old residual`` holds element for element in float32. The aggregator adds the
sent values into its buffer at their positions, after checking every
position, since they come off the wire.

Selection ranks entries by the bits of ``|x|`` read as an unsigned integer,
which orders non-negative float32 exactly by magnitude (``-0.0`` ties ``0.0``,
infinities rank above every finite value, NaN above infinity). A radix select
over those 32-bit keys (four passes of 8 bits each) finds the k-th largest
key in O(n) time, worst case included, with no sort and no copy of the
input; a final pass collects the winners in ascending position, so ties go to
the lower position and the result never depends on the platform.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["scatter_accumulate", "topk_indices", "topk_with_feedback"]

_MAGNITUDE_BITS = 0x7FFFFFFF  # float32 bits without the sign bit


@njit(**JIT_OPTIONS)
def _kth_largest_key_kernel(bits, k):
    """Radix select over ``bits & 0x7FFFFFFF``; 1 <= k <= n.

    Returns ``(threshold, ties)``: the k-th largest key, and how many entries
    whose key equals it belong to the top k (the others are strictly larger).
    """
    counts = np.zeros(256, dtype=np.int64)
    prefix = np.int64(0)
    mask = np.int64(0)
    remaining = np.int64(k)
    for shift in (24, 16, 8, 0):
        counts[:] = 0
        for i in range(bits.shape[0]):
            key = np.int64(bits[i]) & _MAGNITUDE_BITS
            if key & mask == prefix:
                counts[(key >> shift) & 255] += 1
        digit = 255
        while counts[digit] < remaining:
            remaining -= counts[digit]
            digit -= 1
        prefix |= np.int64(digit) << shift
        mask |= np.int64(255) << shift
    return prefix, remaining


@njit(**JIT_OPTIONS)
def _collect_kernel(bits, threshold, ties, out):
    """Write, in ascending order, the positions whose key beats ``threshold``
    and the first ``ties`` positions whose key equals it."""
    j = 0
    for i in range(bits.shape[0]):
        key = np.int64(bits[i]) & _MAGNITUDE_BITS
        if key > threshold:
            out[j] = i
            j += 1
        elif key == threshold and ties > 0:
            out[j] = i
            j += 1
            ties -= 1


@njit(**JIT_OPTIONS)
def _topk_kernel(values, k, out):
    """Positions of the k largest |values| into ``out`` (uint32[k]); 0 < k < n."""
    bits = values.view(np.uint32)
    threshold, ties = _kth_largest_key_kernel(bits, k)
    _collect_kernel(bits, threshold, ties, out)


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
def _first_bad_index_kernel(indices, size):
    """Position of the first index that is >= size or not above its predecessor; -1 if none."""
    previous = np.int64(-1)
    for j in range(indices.shape[0]):
        i = np.int64(indices[j])
        if i >= size or i <= previous:
            return j
        previous = i
    return -1


@njit(**JIT_OPTIONS)
def _scatter_kernel(acc, coefficient, indices, values):
    a = np.float32(coefficient)
    for j in range(indices.shape[0]):
        acc[indices[j]] += a * values[j]


def _vector(name: str, array: object, dtype: type, writeable: bool = False) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise KernelInputError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise KernelInputError(f"{name} must have dtype {np.dtype(dtype)}, got {array.dtype}")
    if array.ndim != 1:
        raise KernelInputError(f"{name} must be 1-D, got shape {array.shape}")
    if not array.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if writeable and not array.flags.writeable:
        raise KernelInputError(f"{name} must be writeable: it is updated in place")
    return array


def _count(k: object, n: int) -> int:
    try:
        k = operator.index(k)  # type: ignore[arg-type]
    except TypeError:
        raise KernelInputError(f"k must be an int, got {k!r}") from None
    return max(0, min(k, n))


def _select(values: np.ndarray, k: int) -> np.ndarray:
    n = values.shape[0]
    if k == n:
        return np.arange(n, dtype=np.uint32)
    out = np.empty(k, dtype=np.uint32)
    if k > 0:
        _topk_kernel(values, k, out)
    return out


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Positions (uint32, ascending) of the k entries of largest magnitude.

    ``k`` is clipped to ``[0, len(values)]``. Equal magnitudes go to the lower
    position; NaN ranks above infinity, infinity above every finite value.
    O(n) time.
    """
    values = _vector("values", values, np.float32)
    if values.shape[0] >= 2**32:
        raise KernelInputError("values must have fewer than 2**32 entries (uint32 positions)")
    return _select(values, _count(k, values.shape[0]))


def topk_with_feedback(
    delta: np.ndarray, residual: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Send the top k of ``delta + residual``; ``residual`` keeps the rest.

    Returns ``(indices, sent)``: uint32 positions in ascending order, as
    :func:`topk_indices` picks them from ``corrected = delta + residual``
    (float32), and ``sent = corrected[indices]`` (float32). ``residual`` is
    overwritten with ``corrected`` whose sent entries are zeroed, so that
    ``sent + residual == delta + old residual`` exactly; ``delta`` is read only.
    """
    delta = _vector("delta", delta, np.float32)
    residual = _vector("residual", residual, np.float32, writeable=True)
    if delta.shape != residual.shape:
        raise KernelInputError(f"delta {delta.shape} and residual {residual.shape} differ")
    if np.may_share_memory(delta, residual):
        raise KernelInputError("delta and residual must not share memory")
    if delta.shape[0] >= 2**32:
        raise KernelInputError("delta must have fewer than 2**32 entries (uint32 positions)")
    k = _count(k, delta.shape[0])
    _add_kernel(delta, residual)
    indices = _select(residual, k)
    sent = np.empty(k, dtype=np.float32)
    _take_kernel(residual, indices, sent)
    return indices, sent


def scatter_accumulate(
    acc: np.ndarray, coefficient: float, indices: np.ndarray, values: np.ndarray
) -> None:
    """``acc[indices] += float32(coefficient) * values``, in place.

    ``indices`` (uint32) and ``values`` (float32) come off the wire, so every
    index is checked first: each must be below ``len(acc)`` and above the one
    before it (strictly increasing, hence no repeats), and there must be as
    many values as indices. Anything else raises
    :class:`~fedbus.broker.errors.KernelInputError` before ``acc`` is touched.
    """
    acc = _vector("acc", acc, np.float32, writeable=True)
    indices = _vector("indices", indices, np.uint32)
    values = _vector("values", values, np.float32)
    if indices.shape != values.shape:
        raise KernelInputError(f"{indices.shape[0]} indices for {values.shape[0]} values")
    if np.may_share_memory(acc, values) or np.may_share_memory(acc, indices):
        raise KernelInputError("acc must not share memory with indices or values")
    if not isinstance(coefficient, numbers.Real):
        raise KernelInputError(f"coefficient must be a real number, got {coefficient!r}")
    with np.errstate(over="ignore"):
        a = np.float32(float(coefficient))
    if not np.isfinite(a):
        raise KernelInputError(f"coefficient must be finite in float32, got {coefficient!r}")
    bad = _first_bad_index_kernel(indices, acc.shape[0])
    if bad >= 0:
        got = int(indices[bad])
        if got >= acc.shape[0]:
            raise KernelInputError(
                f"index {got} at position {bad} is out of range for {acc.shape[0]} elements"
            )
        raise KernelInputError(
            f"indices must be strictly increasing: {got} at position {bad} follows "
            f"{int(indices[bad - 1])}"
        )
    _scatter_kernel(acc, a, indices, values)
