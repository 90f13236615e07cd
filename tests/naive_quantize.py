"""Slow, obvious numpy references for fedbus.kernels.quantize.

Written from the layout in the module docstring, one array formula per step,
so that a mistake in the kernels' loops (block edges, nibble order, signs)
shows up as a mismatch here.
"""

from __future__ import annotations

import numpy as np

QMAX = {8: 127, 4: 7}


def hash_uniforms(seed: int, n: int) -> np.ndarray:
    """u_i for i < n (float32): a 16-bit half of the hash of (folded seed, i >> 1), cell centre."""
    seed %= 2**64
    key = np.uint32((seed ^ (seed >> 32)) & 0xFFFFFFFF)
    index = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = ((index >> np.uint64(1)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        h = h * np.uint32(0x9E3779B9) + key
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x7FEB352D)
        h = (h ^ (h >> np.uint32(15))) * np.uint32(0x846CA68B)
        h = h ^ (h >> np.uint32(16))
    halves = np.where(index % 2 == 0, h & np.uint32(0xFFFF), h >> np.uint32(16))
    return (halves.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-16)


def block_scales(values: np.ndarray, bits: int, block: int) -> np.ndarray:
    """float32(max|x| / qmax) per block, one float32 step down if qmax * s overflows."""
    qmax = np.float32(QMAX[bits])
    scales = []
    for start in range(0, values.size, block):
        top = np.abs(values[start : start + block]).max()
        scale = np.float32(top / qmax)
        with np.errstate(over="ignore"):
            if np.isinf(scale * qmax):
                scale = np.nextafter(scale, np.float32(0))
        scales.append(scale)
    return np.array(scales, dtype=np.float32)


def integer_codes(
    values: np.ndarray, bits: int, block: int, seed: int, rounding: str = "stochastic"
) -> np.ndarray:
    """The codes c_i as int64, 0 where s = 0; otherwise clip(round(y), -qmax, qmax).

    y = x * float32(1 / s) in float32 (in float64 for a subnormal s), rounded
    down after adding u (stochastic) or 1/2 (nearest).
    """
    qmax = QMAX[bits]
    per_element = np.repeat(block_scales(values, bits, block), block)[: values.size]
    live = per_element > 0
    normal = per_element >= np.float32(2.0**-126)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        narrow = values * (np.float32(1) / per_element)  # float32 throughout
        wide = values.astype(np.float64) * (1.0 / per_element.astype(np.float64))
    if rounding == "nearest":
        uniforms = np.full(values.size, 0.5, dtype=np.float32)
    else:
        uniforms = hash_uniforms(seed, values.size)
    with np.errstate(invalid="ignore"):
        raw = np.where(
            normal,
            np.floor(narrow + uniforms),
            np.floor(wide + uniforms.astype(np.float64)),
        )
    return np.where(live, np.clip(np.nan_to_num(raw), -qmax, qmax), 0).astype(np.int64)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """int8 bytes (8 bits) or nibbles c + 8, element 2m low in byte m (4 bits)."""
    if bits == 8:
        return codes.astype(np.int8).view(np.uint8)
    nibbles = (codes + 8).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))  # the last high nibble is 0
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The n integer codes (int64) that ``data`` holds."""
    if bits == 8:
        return data.view(np.int8).astype(np.int64)
    nibbles = np.empty(2 * data.size, dtype=np.int64)
    nibbles[0::2] = data & 0x0F
    nibbles[1::2] = data >> 4
    return nibbles[:n] - 8


def quantize(
    values: np.ndarray, bits: int, block: int, seed: int, rounding: str = "stochastic"
) -> tuple[np.ndarray, np.ndarray]:
    codes = integer_codes(values, bits, block, seed, rounding)
    return block_scales(values, bits, block), pack(codes, bits)


def dequantize(scales: np.ndarray, data: np.ndarray, bits: int, block: int, n: int) -> np.ndarray:
    """float32(c_i) * s_j, one float32 multiply per element."""
    per_element = np.repeat(scales, block)[:n]
    return unpack(data, bits, n).astype(np.float32) * per_element
