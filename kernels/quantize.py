"""Blockwise 8- and 4-bit quantization of float32 vectors, and fused decoding.

The wire format is docs/PROTOCOL.md section 5 (codecs ``q8`` and ``q4``).
This docstring states it precisely enough for a C encoder or decoder.

Blocks and scales
    n float32 values x_0 .. x_{n-1} are cut into n_blocks = ceil(n / B)
    blocks of B >= 1 consecutive elements; block j holds elements
    j*B .. min(n, (j+1)*B) - 1, so only the last block may be shorter.
    Block j has one scale s_j: a finite float32 >= 0, sent as 4 bytes IEEE-754
    binary32 little-endian, blocks in order (4 * n_blocks bytes).
    The encoder uses s_j = float32(m_j / qmax), the float32 quotient rounded to
    nearest, m_j = max |x_i| over the block, qmax = 127 (8 bits) or 7 (4 bits);
    if float32(qmax * s_j) would overflow to infinity (m_j within a rounding of
    float32's largest value), s_j is the next float32 below instead, so that
    no code decodes to infinity. An all-zero block has s_j = 0 and all codes 0.

Codes
    Element i of block j has an integer code c_i in [-qmax, qmax] and decodes
    to the float32 product float32(c_i) * s_j (one IEEE multiply, round to
    nearest). The encoder rounds stochastically:
    c_i = clamp(floor(float64(x_i) * (1.0 / float64(s_j)) + u_i), -qmax, qmax),
    each operation in float64 (multiply by the reciprocal, not divide), with
    c_i = 0 when s_j = 0. E[c_i * s_j] = x_i except where the clamp bites: a
    value whose quotient exceeds qmax because s_j was rounded down, which
    moves it by at most qmax half-ulps of s_j. That is negligible for a normal
    s_j but not for a subnormal one (s_j < 2**-126, i.e. m_j < qmax * 2**-126), whose
    decoded error may exceed one step s_j by up to qmax * 2**-150.

Uniforms (encoder only; a decoder never needs them)
    u_i comes from SplitMix64 of (seed, i), i the element's index in the
    whole vector (not in its block), all arithmetic mod 2**64::

        z = seed + (i + 1) * 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z = z ^ (z >> 31)
        u_i = (z >> 11) * 2**-53            (53 bits, exactly in [0, 1))

    A seed therefore reproduces the codes exactly, with or without
    NUMBA_DISABLE_JIT, whatever the block split or thread count.

Byte layout of the codes (``data``)
    8 bits: n bytes; byte i is c_i as an int8 in two's complement
        (c_i & 0xFF; -1 is 0xFF, -127 is 0x81; 0x80 never appears).
    4 bits: ceil(n / 2) bytes; the code is stored as the nibble c_i + 8 in
        1..15 (the encoder never writes 0; ``dequantize`` reads a 0 nibble as
        -8). Byte m holds element 2m in its low nibble (bits 0-3) and element
        2m + 1 in its high nibble (bits 4-7):
        byte m = (c_{2m} + 8) | ((c_{2m+1} + 8) << 4). For odd n the high
        nibble of the last byte is 0. Nibble pairs ignore block edges: with an
        odd B, one byte may hold elements of two blocks.

Decoding is ``dequantize``; the aggregator's fused path is
``dequantize_accumulate``, which computes, element by element in float32,
``acc[i] = acc[i] + float32(a) * (float32(c_i) * s_j)`` (that order, no fused
multiply-add), so it equals ``acc + float32(a) * dequantize(...)`` bit for bit
without making the decoded array.

Private ``_kernel`` functions trust their inputs and do no bounds checking;
the public wrappers check every dtype, length and scale first (a wire payload
is untrusted) and raise :class:`~fedbus.broker.errors.KernelInputError`.
The loops are serial and written so that the compiler can vectorise them
(no branch in the inner loop); results never depend on threads.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = [
    "accumulate",
    "code_bytes",
    "dequantize",
    "dequantize_accumulate",
    "n_blocks",
    "quantize",
    "sum_of_squares",
]

QMAX = {8: 127, 4: 7}
"""Largest code magnitude for each supported bit width."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53
_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_FLOAT32_INF = np.float32(np.inf)


@njit(**JIT_OPTIONS)
def _uniform(seed, index):
    """SplitMix64 of (seed, index) as a float64 in [0, 1), 53 bits."""
    z = seed + np.uint64(index + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TO_UNIT


@njit(**JIT_OPTIONS)
def _code(x, inverse_scale, seed, index, qmax):
    """Stochastically rounded code of x: floor(x / s + u) clamped to [-qmax, qmax]."""
    q = np.int64(np.floor(np.float64(x) * inverse_scale + _uniform(seed, index)))
    return min(max(q, -qmax), qmax)


@njit(**JIT_OPTIONS)
def _block_scale(magnitude_bits, pun, qmax):
    """float32(max |x| / qmax) of one block, from the values' bit patterns; -1 if any is not finite.

    For float32, |x| ordered by value is |x| ordered by bit pattern (sign bit
    cleared), inf and NaN above every finite value; and an integer max
    reduction vectorises where a float one, with its NaN rules, does not.
    ``pun`` is a 1-element uint32 scratch array.
    """
    top = np.uint32(0)
    for k in range(magnitude_bits.shape[0]):
        top = max(top, magnitude_bits[k] & _ABS_MASK)
    if top >= _INF_BITS:
        return np.float32(-1.0)
    pun[0] = top
    as_float = pun.view(np.float32)
    scale = np.float32(as_float[0] / np.float32(qmax))
    if np.float32(scale * np.float32(qmax)) == _FLOAT32_INF:
        # max|x| within a rounding of float32's largest value: one step down,
        # so that no code decodes to infinity
        as_float[0] = scale
        pun[0] -= np.uint32(1)
        scale = as_float[0]
    return scale


# Every loop below runs over a slice from index 0: numba then knows no index is
# negative and drops its wrap-around handling, which is what lets LLVM
# vectorise the loop (about 3x on a block of 256).


@njit(**JIT_OPTIONS)
def _quantize8_kernel(values, seed, block, scales, codes):
    """Fill scales and codes (zeroed by the caller); return -1, or the first block
    holding a NaN or an infinity (the outputs are then incomplete)."""
    bits = values.view(np.uint32)
    pun = np.zeros(1, dtype=np.uint32)
    n = values.shape[0]
    for j in range(scales.shape[0]):
        start = j * block
        stop = min(n, start + block)
        scale = _block_scale(bits[start:stop], pun, 127)
        if scale < 0:
            return j
        scales[j] = scale
        if scale == 0:  # codes stay 0 (the caller zeroed them)
            continue
        inverse = 1.0 / np.float64(scale)
        x = values[start:stop]
        out = codes[start:stop]
        for k in range(x.shape[0]):
            out[k] = np.uint8(_code(x[k], inverse, seed, start + k, 127) & 0xFF)
    return -1


@njit(**JIT_OPTIONS)
def _quantize4_kernel(values, seed, block, scales, codes):
    """As _quantize8_kernel; ``codes`` must be zeroed: nibbles are OR-ed in at block edges."""
    bits = values.view(np.uint32)
    pun = np.zeros(1, dtype=np.uint32)
    n = values.shape[0]
    for j in range(scales.shape[0]):
        start = j * block
        stop = min(n, start + block)
        scale = _block_scale(bits[start:stop], pun, 7)
        if scale < 0:
            return j
        scales[j] = scale
        if scale == 0:
            # every code is 0, stored as the nibble 8, but only within [start, stop)
            for i in range(start, stop):
                codes[i >> 1] |= np.uint8(8 << (4 * (i & 1)))
            continue
        inverse = 1.0 / np.float64(scale)
        first = start
        if first % 2 == 1:  # high nibble of a byte the previous block began
            c = _code(values[first], inverse, seed, first, 7) + 8
            codes[first >> 1] |= np.uint8(c << 4)
            first += 1
        pairs_stop = first + (stop - first) // 2 * 2
        x = values[first:pairs_stop]
        out = codes[first >> 1 : pairs_stop >> 1]
        for m in range(out.shape[0]):
            low = _code(x[2 * m], inverse, seed, first + 2 * m, 7) + 8
            high = _code(x[2 * m + 1], inverse, seed, first + 2 * m + 1, 7) + 8
            out[m] = np.uint8(low | (high << 4))
        if pairs_stop < stop:  # low nibble; the next block (if any) adds the high one
            c = _code(values[pairs_stop], inverse, seed, pairs_stop, 7) + 8
            codes[pairs_stop >> 1] |= np.uint8(c)
    return -1


@njit(**JIT_OPTIONS)
def _nibble(codes, i):
    """The 4-bit code of element i (in -8..7; -8 only from a malformed 0 nibble)."""
    byte = np.int32(codes[i >> 1])
    return ((byte >> 4) if i % 2 else (byte & 0x0F)) - 8


@njit(**JIT_OPTIONS)
def _dequantize8_kernel(scales, codes, block, out):
    n = out.shape[0]
    signed = codes.view(np.int8)
    for j in range(scales.shape[0]):
        scale = scales[j]
        start = j * block
        stop = min(n, start + block)
        c = signed[start:stop]
        y = out[start:stop]
        for k in range(y.shape[0]):
            y[k] = np.float32(c[k]) * scale


@njit(**JIT_OPTIONS)
def _dequantize4_kernel(scales, codes, block, out):
    n = out.shape[0]
    for j in range(scales.shape[0]):
        scale = scales[j]
        start = j * block
        stop = min(n, start + block)
        first = start
        if first % 2 == 1:
            out[first] = np.float32(_nibble(codes, first)) * scale
            first += 1
        pairs_stop = first + (stop - first) // 2 * 2
        c = codes[first >> 1 : pairs_stop >> 1]
        y = out[first:pairs_stop]
        for m in range(c.shape[0]):
            byte = np.int32(c[m])
            y[2 * m] = np.float32((byte & 0x0F) - 8) * scale
            y[2 * m + 1] = np.float32((byte >> 4) - 8) * scale
        if pairs_stop < stop:
            out[pairs_stop] = np.float32(_nibble(codes, pairs_stop)) * scale


@njit(**JIT_OPTIONS)
def _dequantize8_accumulate_kernel(acc, coefficient, scales, codes, block):
    a = np.float32(coefficient)
    n = acc.shape[0]
    signed = codes.view(np.int8)
    for j in range(scales.shape[0]):
        scale = scales[j]
        start = j * block
        stop = min(n, start + block)
        c = signed[start:stop]
        y = acc[start:stop]
        for k in range(y.shape[0]):
            y[k] += a * (np.float32(c[k]) * scale)


@njit(**JIT_OPTIONS)
def _dequantize4_accumulate_kernel(acc, coefficient, scales, codes, block):
    a = np.float32(coefficient)
    n = acc.shape[0]
    for j in range(scales.shape[0]):
        scale = scales[j]
        start = j * block
        stop = min(n, start + block)
        first = start
        if first % 2 == 1:
            acc[first] += a * (np.float32(_nibble(codes, first)) * scale)
            first += 1
        pairs_stop = first + (stop - first) // 2 * 2
        c = codes[first >> 1 : pairs_stop >> 1]
        y = acc[first:pairs_stop]
        for m in range(c.shape[0]):
            byte = np.int32(c[m])
            y[2 * m] += a * (np.float32((byte & 0x0F) - 8) * scale)
            y[2 * m + 1] += a * (np.float32((byte >> 4) - 8) * scale)
        if pairs_stop < stop:
            acc[pairs_stop] += a * (np.float32(_nibble(codes, pairs_stop)) * scale)


@njit(**JIT_OPTIONS)
def _sum_of_squares_kernel(scales, codes, bits, block, n):
    """sum((c_i s_j)^2) as the sum over blocks of s_j^2 * sum(c_i^2), in float64."""
    signed = codes.view(np.int8)
    total = 0.0
    for j in range(scales.shape[0]):
        squares = 0
        for i in range(j * block, min(n, (j + 1) * block)):
            c = np.int64(signed[i]) if bits == 8 else np.int64(_nibble(codes, i))
            squares += c * c
        scale = np.float64(scales[j])
        total += scale * scale * np.float64(squares)
    return total


@njit(**JIT_OPTIONS)
def _accumulate_kernel(acc, coefficient, values):
    a = np.float32(coefficient)
    for i in range(acc.shape[0]):
        acc[i] += a * values[i]


def n_blocks(n: int, block_size: int) -> int:
    """Number of scales for n values in blocks of block_size: ceil(n / block_size)."""
    return -(-n // block_size)


def code_bytes(n: int, bits: int) -> int:
    """Exact length of the codes of n values: n (8 bits) or ceil(n / 2) (4 bits)."""
    return n if bits == 8 else (n + 1) // 2


def _vector(name: str, array: object, dtype: type) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise KernelInputError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype or array.ndim != 1:
        raise KernelInputError(
            f"{name} must be a 1-D {np.dtype(dtype).name} array, got {array.dtype} {array.shape}"
        )
    if not array.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return array


def _writeable(name: str, array: np.ndarray) -> None:
    if not array.flags.writeable:
        raise KernelInputError(f"{name} must be writeable: it is updated in place")


def _integer(name: str, value: object, low: int | None) -> int:
    if isinstance(value, bool):
        raise KernelInputError(f"{name} must be an int, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise KernelInputError(f"{name} must be an int, got {value!r}") from None
    if low is not None and number < low:
        raise KernelInputError(f"{name} must be >= {low}, got {number}")
    return number


def _format(bits: object, block_size: object) -> tuple[int, int]:
    if isinstance(bits, bool) or bits not in QMAX:
        raise KernelInputError(f"bits must be 8 or 4, got {bits!r}")
    return operator.index(bits), _integer("block_size", block_size, 1)  # type: ignore[arg-type]


def _coefficient(coefficient: object) -> np.float32:
    try:
        return np.float32(coefficient)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KernelInputError(f"coefficient must be a real number, got {coefficient!r}") from None


def _check_encoded(
    scales: object, codes: object, bits: object, block_size: object, n: object
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Every length and scale a kernel relies on, checked before it reads a byte."""
    bits, block_size = _format(bits, block_size)
    n = _integer("n", n, 0)
    scales = _vector("scales", scales, np.float32)
    codes = _vector("codes", codes, np.uint8)
    expected_blocks = n_blocks(n, block_size)
    if scales.shape[0] != expected_blocks:
        raise KernelInputError(
            f"{scales.shape[0]} scales for {n} values in blocks of {block_size}: "
            f"expected {expected_blocks}"
        )
    expected_bytes = code_bytes(n, bits)
    if codes.shape[0] != expected_bytes:
        raise KernelInputError(
            f"{codes.shape[0]} code bytes for {n} {bits}-bit values: expected {expected_bytes}"
        )
    if scales.size and not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise KernelInputError("scales must be finite and >= 0")
    return scales, codes, bits, block_size, n


def quantize(
    values: np.ndarray, bits: int, block_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encode 1-D float32 ``values``; return (scales float32[n_blocks], codes uint8).

    ``values`` must be finite. ``seed`` is any int (taken mod 2**64). The layout
    and the rounding are in the module docstring.
    """
    values = _vector("values", values, np.float32)
    bits, block_size = _format(bits, block_size)
    seed = _integer("seed", seed, None) % 2**64
    n = values.shape[0]
    scales = np.empty(n_blocks(n, block_size), dtype=np.float32)
    codes = np.zeros(code_bytes(n, bits), dtype=np.uint8)
    kernel = _quantize8_kernel if bits == 8 else _quantize4_kernel
    with np.errstate(over="ignore"):  # uint64 wrap-around is the generator's arithmetic
        bad_block = kernel(values, np.uint64(seed), block_size, scales, codes)
    if bad_block >= 0:
        raise KernelInputError(f"values must be finite: block {bad_block} holds a NaN or inf")
    return scales, codes


def dequantize(
    scales: np.ndarray, codes: np.ndarray, bits: int, block_size: int, n: int
) -> np.ndarray:
    """The n float32 values (float32[n]) that ``scales`` and ``codes`` encode."""
    scales, codes, bits, block_size, n = _check_encoded(scales, codes, bits, block_size, n)
    out = np.empty(n, dtype=np.float32)
    kernel = _dequantize8_kernel if bits == 8 else _dequantize4_kernel
    kernel(scales, codes, block_size, out)
    return out


def dequantize_accumulate(
    acc: np.ndarray,
    coefficient: float,
    scales: np.ndarray,
    codes: np.ndarray,
    bits: int,
    block_size: int,
) -> None:
    """``acc += float32(coefficient) * decoded`` in place, with no decoded copy.

    The number of values is ``acc.size``. Bit for bit equal to
    ``acc + np.float32(coefficient) * dequantize(scales, codes, bits, block_size, acc.size)``.
    """
    acc = _vector("acc", acc, np.float32)
    _writeable("acc", acc)
    a = _coefficient(coefficient)
    scales, codes, bits, block_size, _ = _check_encoded(
        scales, codes, bits, block_size, acc.shape[0]
    )
    kernel = _dequantize8_accumulate_kernel if bits == 8 else _dequantize4_accumulate_kernel
    kernel(acc, a, scales, codes, block_size)


def accumulate(acc: np.ndarray, coefficient: float, values: np.ndarray) -> None:
    """``acc += float32(coefficient) * values`` in place (the f32 codec's fused path).

    Bit for bit equal to ``acc + np.float32(coefficient) * values``.
    """
    acc = _vector("acc", acc, np.float32)
    _writeable("acc", acc)
    values = _vector("values", values, np.float32)
    if values.shape != acc.shape:
        raise KernelInputError(f"values of shape {values.shape} for acc of {acc.shape}")
    _accumulate_kernel(acc, _coefficient(coefficient), values)


def sum_of_squares(
    scales: np.ndarray, codes: np.ndarray, bits: int, block_size: int, n: int
) -> float:
    """Sum of the squared decoded values, in float64, without decoding them.

    It is the sum of (c * s)^2 in float64; the float32 values `dequantize`
    returns are c * s rounded to float32, so their squares differ by at most
    a relative 2.4e-7. The aggregator's norm bound uses it so that a q8/q4
    update is never copied to float32.
    """
    scales, codes, bits, block_size, n = _check_encoded(scales, codes, bits, block_size, n)
    return float(_sum_of_squares_kernel(scales, codes, bits, block_size, n))
