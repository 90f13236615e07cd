"""Slow, obvious numpy references for fedbus.kernels.quantize.

Written from the layout in the module docstring, one array formula per step,
so that a mistake in the kernels' loops (block edges, nibble order, signs)
shows up as a mismatch here.
"""

from __future__ import annotations

import numpy as np

QMAX = {8: 127, 4: 7}


def splitmix_uniforms(seed: int, n: int) -> np.ndarray:
    """u_i = SplitMix64(seed, i) >> 11 scaled by 2**-53, for i < n (float64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


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


def integer_codes(values: np.ndarray, bits: int, block: int, seed: int) -> np.ndarray:
    """The codes c_i as int64: clip(floor(x * (1 / s) + u), -qmax, qmax); 0 where s = 0."""
    qmax = QMAX[bits]
    per_element = np.repeat(block_scales(values, bits, block).astype(np.float64), block)
    per_element = per_element[: values.size]
    live = per_element > 0
    inverse = np.divide(1.0, per_element, out=np.zeros_like(per_element), where=live)
    raw = np.floor(values.astype(np.float64) * inverse + splitmix_uniforms(seed, values.size))
    return np.where(live, np.clip(raw, -qmax, qmax), 0).astype(np.int64)


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


def quantize(values: np.ndarray, bits: int, block: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return block_scales(values, bits, block), pack(integer_codes(values, bits, block, seed), bits)


def dequantize(scales: np.ndarray, data: np.ndarray, bits: int, block: int, n: int) -> np.ndarray:
    """float32(c_i) * s_j, one float32 multiply per element."""
    per_element = np.repeat(scales, block)[:n]
    return unpack(data, bits, n).astype(np.float32) * per_element
