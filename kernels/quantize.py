"""Blockwise 8- and 4-bit quantization of float32 vectors, and fused decoding.

Layout (docs/PROTOCOL.md section 5): values are cut into blocks of
`block_size`; block j has scale s_j = max|x| / qmax (qmax 127 for 8 bits,
7 for 4 bits; 0 for an all-zero block) and element i the integer code
c_i = floor(x_i / s_j + u_i), u_i uniform in [0, 1) (stochastic rounding,
so E[c_i s_j] = x_i), clamped to [-qmax, qmax]. 8-bit codes are int8 bytes;
4-bit codes are nibbles c + 8, element 2m in the low nibble of byte m.

The uniforms come from a counter-based generator (SplitMix64 of seed and
element index, 53 bits), computed inside the kernel: no array of random
numbers is made, a seed reproduces the codes exactly, and the result is the
same compiled or as plain Python (NUMBA_DISABLE_JIT). The aggregator never
needs them: it decodes c * s, fused into its buffer by `dequantize_accumulate`,
without a float32 copy of the update.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["accumulate", "dequantize", "dequantize_accumulate", "quantize", "sum_of_squares"]

_QMAX = {8: 127, 4: 7}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@njit(**JIT_OPTIONS)
def _uniform(seed, index):
    """SplitMix64 of (seed, index) as a float64 in [0, 1)."""
    z = seed + np.uint64(index + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TO_UNIT


@njit(**JIT_OPTIONS)
def _quantize_kernel(values, seed, bits, block, scales, codes):
    qmax = 127 if bits == 8 else 7
    n = values.shape[0]
    for j in range(scales.shape[0]):
        start = j * block
        stop = min(n, start + block)
        top = np.float32(0.0)
        for i in range(start, stop):
            a = abs(values[i])
            if a > top:
                top = a
        scale = np.float32(top / np.float32(qmax))
        scales[j] = scale
        for i in range(start, stop):
            q = 0
            if scale > 0:
                u = _uniform(seed, i)
                q = int(np.floor(np.float64(values[i]) / np.float64(scale) + u))
                q = max(-qmax, min(qmax, q))
            if bits == 8:
                codes[i] = np.uint8(q & 0xFF)
            elif i % 2 == 0:
                codes[i >> 1] = np.uint8(q + 8)
            else:
                codes[i >> 1] = np.uint8(codes[i >> 1] | ((q + 8) << 4))


@njit(**JIT_OPTIONS)
def _code(codes, bits, i):
    if bits == 8:
        c = np.int32(codes[i])
        return c - 256 if c > 127 else c
    byte = np.int32(codes[i >> 1])
    return ((byte >> 4) if i % 2 else (byte & 0x0F)) - 8


@njit(**JIT_OPTIONS)
def _dequantize_kernel(scales, codes, bits, block, out):
    n = out.shape[0]
    signed = codes.view(np.int8)
    for j in range(scales.shape[0]):
        scale = scales[j]
        stop = min(n, (j + 1) * block)
        if bits == 8:
            for i in range(j * block, stop):
                out[i] = np.float32(signed[i]) * scale
        else:
            for i in range(j * block, stop):
                out[i] = np.float32(_code(codes, bits, i)) * scale


@njit(**JIT_OPTIONS)
def _dequantize_accumulate_kernel(acc, coefficient, scales, codes, bits, block):
    a = np.float32(coefficient)
    n = acc.shape[0]
    signed = codes.view(np.int8)
    for j in range(scales.shape[0]):
        scale = scales[j]
        stop = min(n, (j + 1) * block)
        if bits == 8:  # a branch-free inner loop the compiler can vectorise
            for i in range(j * block, stop):
                acc[i] += a * (np.float32(signed[i]) * scale)
        else:
            for i in range(j * block, stop):
                acc[i] += a * (np.float32(_code(codes, bits, i)) * scale)


@njit(**JIT_OPTIONS)
def _sum_of_squares_kernel(scales, codes, bits, block, n):
    """sum((c_i s_j)^2) as sum over blocks of s_j^2 * sum(c_i^2), in float64."""
    signed = codes.view(np.int8)
    total = 0.0
    for j in range(scales.shape[0]):
        squares = 0
        for i in range(j * block, min(n, (j + 1) * block)):
            c = np.int64(signed[i]) if bits == 8 else np.int64(_code(codes, bits, i))
            squares += c * c
        scale = np.float64(scales[j])
        total += scale * scale * np.float64(squares)
    return total


@njit(**JIT_OPTIONS)
def _accumulate_kernel(acc, coefficient, values):
    a = np.float32(coefficient)
    for i in range(acc.shape[0]):
        acc[i] += a * values[i]


def _vector(name: str, array: np.ndarray, dtype: type) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
        raise KernelInputError(f"{name} must be a 1-D {np.dtype(dtype).name} array")
    if not array.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")


def _check_layout(
    bits: int, block_size: int, n: int, scales: np.ndarray, codes: np.ndarray
) -> None:
    if bits not in _QMAX:
        raise KernelInputError(f"bits must be 8 or 4, got {bits}")
    if block_size < 1 or n < 0:
        raise KernelInputError(f"block_size must be >= 1 and n >= 0, got {block_size}, {n}")
    _vector("scales", scales, np.float32)
    _vector("codes", codes, np.uint8)
    if scales.shape[0] != -(-n // block_size):
        raise KernelInputError(f"{scales.shape[0]} scales for {n} values in blocks of {block_size}")
    if codes.shape[0] != (n if bits == 8 else (n + 1) // 2):
        raise KernelInputError(f"{codes.shape[0]} code bytes for {n} {bits}-bit values")
    if scales.size and not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise KernelInputError("scales must be finite and >= 0")


def quantize(
    values: np.ndarray, bits: int, block_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scales float32[n_blocks], codes uint8) of `values` (1-D float32), see module doc."""
    _vector("values", values, np.float32)
    if bits not in _QMAX or block_size < 1:
        raise KernelInputError(f"bits must be 8 or 4 and block_size >= 1, got {bits}, {block_size}")
    if not np.isfinite(values).all():
        raise KernelInputError("values must be finite")
    n = values.shape[0]
    scales = np.zeros(-(-n // block_size), dtype=np.float32)
    codes = np.zeros(n if bits == 8 else (n + 1) // 2, dtype=np.uint8)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the generator's arithmetic
        _quantize_kernel(values, np.uint64(seed % 2**64), bits, block_size, scales, codes)
    return scales, codes


def dequantize(
    scales: np.ndarray, codes: np.ndarray, bits: int, block_size: int, n: int
) -> np.ndarray:
    """The n float32 values that `scales` and `codes` encode."""
    _check_layout(bits, block_size, n, scales, codes)
    out = np.empty(n, dtype=np.float32)
    _dequantize_kernel(scales, codes, bits, block_size, out)
    return out


def dequantize_accumulate(
    acc: np.ndarray,
    coefficient: float,
    scales: np.ndarray,
    codes: np.ndarray,
    bits: int,
    block_size: int,
) -> None:
    """acc += float32(coefficient) * decoded, in place, with no decoded copy."""
    _vector("acc", acc, np.float32)
    _check_layout(bits, block_size, acc.shape[0], scales, codes)
    _dequantize_accumulate_kernel(acc, coefficient, scales, codes, bits, block_size)


def accumulate(acc: np.ndarray, coefficient: float, values: np.ndarray) -> None:
    """acc += float32(coefficient) * values, in place (the f32 codec's fused path)."""
    _vector("acc", acc, np.float32)
    if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 1:
        raise KernelInputError("values must be a 1-D float32 array")
    if values.shape != acc.shape:
        raise KernelInputError(f"values of shape {values.shape} for acc of {acc.shape}")
    _accumulate_kernel(acc, coefficient, values)


def sum_of_squares(
    scales: np.ndarray, codes: np.ndarray, bits: int, block_size: int, n: int
) -> float:
    """Sum of the squared decoded values, in float64, without decoding them.

    It is the sum of (c * s)^2 in float64; the float32 values `dequantize`
    returns are c * s rounded to float32, so their squares differ by at most
    a relative 2.4e-7. The aggregator's norm bound uses it so that a q8/q4
    update is never copied to float32.
    """
    _check_layout(bits, block_size, n, scales, codes)
    return float(_sum_of_squares_kernel(scales, codes, bits, block_size, n))
