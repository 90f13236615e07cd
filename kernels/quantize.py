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
    nearest). c_i = 0 when s_j = 0. Otherwise the encoder forms the quotient
    y_i = float32(x_i * r_j), r_j = float32(1 / s_j), in float32 (a
    multiply by the reciprocal, not a divide), and rounds it one of two ways:

    - ``stochastic`` (the default): c_i = clamp(floor(float32(y_i + u_i)),
      -qmax, qmax), u_i a uniform below. E[c_i * s_j] = x_i to within the
      float32 rounding of y_i (a relative 2**-23), so sums of many updates
      carry no rounding bias; every decoded value is one of the two grid
      points next to x_i.
    - ``nearest``: the same with u_i = 1/2, i.e. c_i = clamp(floor(float32(
      y_i + 1/2)), -qmax, qmax) (halves round up); deterministic, and the
      decoded error is at most half a step (plus the float32 roundings).

    For a subnormal s_j (s_j < 2**-126, i.e. m_j < qmax * 2**-126) r_j
    could overflow float32, so the quotient is formed in float64 instead:
    y_i = float64(x_i) * (1.0 / float64(s_j)), u_i widened to float64.
    The clamp only bites on a value whose quotient exceeds qmax because s_j
    was rounded down, which moves it by at most qmax half-ulps of s_j:
    negligible for a normal s_j, but for a subnormal one the decoded error
    may exceed the bound by up to qmax * 2**-150.

Uniforms (encoder only, stochastic rounding; a decoder never needs them)
    The 64-bit seed is folded to a 32-bit key k = (seed ^ (seed >> 32))
    mod 2**32. Elements 2p and 2p + 1 (p = i >> 1, i the element's index in
    the whole vector, not in its block) share one 32-bit hash of (k, p),
    all arithmetic mod 2**32::

        h = (p mod 2**32) * 0x9E3779B9 + k
        h = (h ^ (h >> 16)) * 0x7FEB352D
        h = (h ^ (h >> 15)) * 0x846CA68B
        h = h ^ (h >> 16)
        b_i = (h >> (16 * (i & 1))) & 0xFFFF     (low half for even i)
        u_i = (b_i + 1/2) * 2**-16                (exact in float32; E[u] = 1/2)

    The two multipliers are Chris Wellons' "lowbias32" constants (from his
    hash-prospector search), chosen for full avalanche in two rounds. Why
    this generator: vector units multiply 32-bit lanes in one instruction
    where 64-bit ones take several, and one hash serves two elements; a
    64-bit SplitMix per element held the encoder near half of memory
    bandwidth. Sixteen bits per draw bias a code by at most 2**-17 of a
    step. A seed reproduces the codes exactly, with or without
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
    "ROUNDINGS",
    "sum_of_squares",
]

QMAX = {8: 127, 4: 7}
"""Largest code magnitude for each supported bit width."""

ROUNDINGS = ("stochastic", "nearest")
"""How the encoder rounds x / s to a code: unbiased in expectation, or to nearest."""

_GOLDEN32 = np.uint32(0x9E3779B9)
_HASH1 = np.uint32(0x7FEB352D)
_HASH2 = np.uint32(0x846CA68B)
_LOW16 = np.uint32(0xFFFF)
_CELL = np.float32(2.0**-16)
_HALF_CELL = np.float32(2.0**-17)
_SMALLEST_NORMAL = np.float32(2.0**-126)
_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_FLOAT32_INF = np.float32(np.inf)


@njit(**JIT_OPTIONS)
def _pair_hash(key, pair):
    """The 32-bit hash that gives the uniforms of elements 2*pair and 2*pair + 1.

    32-bit, not 64-bit: vector units multiply 32-bit lanes in one
    instruction where 64-bit ones take several, and one hash serves two
    elements; together that lets the quantize loop run near memory bandwidth.
    """
    # numba widens uint32 arithmetic to 64 bits: each np.uint32() is the mod 2**32
    h = np.uint32(np.uint32(pair & 0xFFFFFFFF) * _GOLDEN32 + key)
    h = np.uint32((h ^ (h >> np.uint32(16))) * _HASH1)
    h = np.uint32((h ^ (h >> np.uint32(15))) * _HASH2)
    return h ^ (h >> np.uint32(16))


@njit(**JIT_OPTIONS)
def _uniform16(bits16, centre):
    """bits16 * 2**-16 + centre, exact in float32.

    Stochastic rounding passes 16 random bits and centre 2**-17 (the middle
    of one of 65536 equal cells of [0, 1), so E[u] = 1/2 exactly);
    rounding to nearest passes 0x8000 and centre 0, i.e. u = 1/2.
    """
    return np.float32(bits16) * _CELL + centre


@njit(**JIT_OPTIONS)
def _uniform(key, index, nearest):
    """u_i of one element (at a block edge; pieces use _fill_pair_hashes)."""
    if nearest:
        return np.float32(0.5)
    h = _pair_hash(key, index >> 1)
    return _uniform16((h >> np.uint32(16 * (index & 1))) & _LOW16, _HALF_CELL)


@njit(**JIT_OPTIONS)
def _code(x, inverse, wide_inverse, u, qmax):
    """floor(x / s + u) clamped to [-qmax, qmax].

    ``wide_inverse`` > 0 marks a subnormal scale, whose float32 reciprocal may
    overflow: the quotient is then formed in float64.
    """
    if wide_inverse > 0:
        q = np.int32(np.floor(np.float64(x) * wide_inverse + np.float64(u)))
    else:
        q = np.int32(np.floor(x * inverse + u))
    return min(max(q, -qmax), qmax)


@njit(inline="always", **JIT_OPTIONS)
def _fill_pair_hashes(key, first_pair, hashes):
    """hashes[t] = the hash of pair first_pair + t; viewed as uint16, element 2t
    of the piece reads the low half and element 2t + 1 the high half (little-endian)."""
    for t in range(hashes.shape[0]):
        hashes[t] = _pair_hash(key, first_pair + t)


# inline="always" (numba IR inlining): called as a function, LLVM no longer
# vectorises its loop (measured: 0.54x np.copyto, against 0.94x inlined).
@njit(inline="always", **JIT_OPTIONS)
def _code_piece(x, inverse, wide_inverse, halves, centre, qmax, offset, out):
    """out[k] = (c_k + offset) mod 256, c_k the code of x[k] with u = _uniform16(halves[k], centre).

    q8 stores offset 0 (two's complement bytes), q4 the nibble offset 8.
    One loop serves both roundings (see _uniform16): a second loop behind a
    branch made the compiler vectorise neither. The subnormal-scale case is
    rare and goes through the general _code.
    """
    high = np.int32(qmax)  # int32 throughout: int64 lanes would halve the vector width
    low = np.int32(-qmax)
    shift = np.int32(offset)
    if wide_inverse > 0:
        for k in range(x.shape[0]):
            c = _code(x[k], inverse, wide_inverse, _uniform16(halves[k], centre), qmax)
            out[k] = np.uint8((c + offset) & 0xFF)
    else:
        for k in range(x.shape[0]):
            q = np.int32(np.floor(x[k] * inverse + _uniform16(halves[k], centre)))
            out[k] = np.uint8((min(max(q, low), high) + shift) & np.int32(0xFF))


@njit(**JIT_OPTIONS)
def _inverses(scale):
    """(float32 1/s, 0.0), or (0, float64 1/s) for a subnormal s (see _code)."""
    if scale < _SMALLEST_NORMAL:
        return np.float32(0.0), 1.0 / np.float64(scale)
    return np.float32(np.float32(1.0) / scale), 0.0


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


# Both encoders walk a block in pieces of at most _PIECE elements that start on
# an even index: first the piece's pair hashes into a small scratch array, then
# the codes in a plain loop that reads 16 random bits per element through a
# uint16 view of that array. Both loops vectorise; one loop doing both, or one
# splitting each hash into two floats, does not. An odd first or last element
# of a block is coded on its own.
_PIECE = 1024


@njit(**JIT_OPTIONS)
def _quantize8_kernel(values, key, nearest, block, scales, codes):
    """Fill scales and codes (zeroed by the caller); return -1, or the first block
    holding a NaN or an infinity (the outputs are then incomplete)."""
    bits = values.view(np.uint32)
    pun = np.zeros(1, dtype=np.uint32)
    hashes = np.full(_PIECE // 2, 0x80008000, dtype=np.uint32)  # u = 1/2 when nearest
    halves = hashes.view(np.uint16)
    centre = np.float32(0.0) if nearest else _HALF_CELL
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
        inverse, wide = _inverses(scale)
        first = start
        if first % 2 == 1:
            u = _uniform(key, first, nearest)
            codes[first] = np.uint8(_code(values[first], inverse, wide, u, 127) & 0xFF)
            first += 1
        pairs_stop = first + (stop - first) // 2 * 2
        for piece in range(first, pairs_stop, _PIECE):
            x = values[piece : min(pairs_stop, piece + _PIECE)]
            if not nearest:
                _fill_pair_hashes(key, piece >> 1, hashes[: x.shape[0] // 2])
            out = codes[piece : piece + x.shape[0]]
            _code_piece(x, inverse, wide, halves[: x.shape[0]], centre, 127, 0, out)
        if pairs_stop < stop:
            u = _uniform(key, pairs_stop, nearest)
            last = _code(values[pairs_stop], inverse, wide, u, 127)
            codes[pairs_stop] = np.uint8(last & 0xFF)
    return -1


@njit(**JIT_OPTIONS)
def _quantize4_kernel(values, key, nearest, block, scales, codes):
    """As _quantize8_kernel; ``codes`` must be zeroed: nibbles are OR-ed in at block edges."""
    bits = values.view(np.uint32)
    pun = np.zeros(1, dtype=np.uint32)
    hashes = np.full(_PIECE // 2, 0x80008000, dtype=np.uint32)  # u = 1/2 when nearest
    halves = hashes.view(np.uint16)
    centre = np.float32(0.0) if nearest else _HALF_CELL
    nibbles = np.empty(_PIECE, dtype=np.uint8)
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
        inverse, wide = _inverses(scale)
        first = start
        if first % 2 == 1:  # high nibble of a byte the previous block began
            c = _code(values[first], inverse, wide, _uniform(key, first, nearest), 7) + 8
            codes[first >> 1] |= np.uint8(c << 4)
            first += 1
        pairs_stop = first + (stop - first) // 2 * 2
        for piece in range(first, pairs_stop, _PIECE):
            x = values[piece : min(pairs_stop, piece + _PIECE)]
            if not nearest:
                _fill_pair_hashes(key, piece >> 1, hashes[: x.shape[0] // 2])
            piece_nibbles = nibbles[: x.shape[0]]
            _code_piece(x, inverse, wide, halves[: x.shape[0]], centre, 7, 8, piece_nibbles)
            out = codes[piece >> 1 : (piece + x.shape[0]) >> 1]
            for m in range(out.shape[0]):
                out[m] = piece_nibbles[2 * m] | (piece_nibbles[2 * m + 1] << np.uint8(4))
        if pairs_stop < stop:  # low nibble; the next block (if any) adds the high one
            c = _code(values[pairs_stop], inverse, wide, _uniform(key, pairs_stop, nearest), 7) + 8
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
        start = j * block
        stop = min(n, start + block)
        squares = np.int64(0)
        if bits == 8:
            c = signed[start:stop]
            for k in range(c.shape[0]):
                v = np.int32(c[k])
                squares += v * v
        else:
            for i in range(start, stop):
                v = np.int32(_nibble(codes, i))
                squares += v * v
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
    values: np.ndarray, bits: int, block_size: int, seed: int, rounding: str = "stochastic"
) -> tuple[np.ndarray, np.ndarray]:
    """Encode 1-D float32 ``values``; return (scales float32[n_blocks], codes uint8).

    ``values`` must be finite. ``seed`` is any int (taken mod 2**64; unused
    when ``rounding`` is ``"nearest"``). The layout and the rounding are in the
    module docstring.
    """
    values = _vector("values", values, np.float32)
    bits, block_size = _format(bits, block_size)
    seed = _integer("seed", seed, None) % 2**64
    if rounding not in ROUNDINGS:
        raise KernelInputError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    key = (seed ^ (seed >> 32)) & 0xFFFFFFFF
    n = values.shape[0]
    scales = np.empty(n_blocks(n, block_size), dtype=np.float32)
    codes = np.zeros(code_bytes(n, bits), dtype=np.uint8)
    kernel = _quantize8_kernel if bits == 8 else _quantize4_kernel
    with np.errstate(over="ignore"):  # uint64 wrap-around is the generator's arithmetic
        bad_block = kernel(values, np.uint32(key), rounding == "nearest", block_size, scales, codes)
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
