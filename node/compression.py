"""Update compression on the node, with error feedback.

Metered, slow links make update bytes the cost that matters after accuracy.
A node sends its delta as `f32` (lossless), `q8`/`q4` (blockwise scaled
integers with stochastic rounding) or `topk` (the k largest entries, their
values in any of those). Lossy codecs drop information; error feedback
(Karimireddy et al. 2019; Lin et al., Deep Gradient Compression, 2018)
keeps it: what one update left out, the residual, is added to the next
delta before compressing, so over time nothing is lost, only delayed. The
residual is part of the device state and survives restarts
(fedbus.node.device_state).

Pure functions: the caller passes the residual in and stores the new one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.broker.tensors import (
    CODEC_F32,
    CODEC_Q4,
    CODEC_Q8,
    CODEC_TOPK,
    FLOAT32,
    VALUE_CODECS,
    WireTensor,
    encode_f32,
)
from fedbus.kernels.quantize import ROUNDINGS, dequantize, quantize
from fedbus.kernels.sparsify import topk_with_feedback

#: Elements per q8/q4 scale: large enough that the 4-byte scales cost under 2%
#: of q8 data (4 / 256), small enough that one outlier spoils few values.
DEFAULT_BLOCK = 256
_BITS = {CODEC_Q8: 8, CODEC_Q4: 4}


@dataclass(frozen=True)
class CodecSpec:
    """How a node encodes its updates: `f32`, `q8`, `q4` or `topk:F[+q8|+q4|+f32]`."""

    codec: str = CODEC_F32
    #: topk: the fraction of each tensor's entries sent (at least one).
    fraction: float = 0.0
    #: topk: codec of the kept values.
    values_codec: str = CODEC_F32
    block: int = DEFAULT_BLOCK
    #: q8/q4: "stochastic" (unbiased) or "nearest" (half-step error, faster);
    #: with error feedback either loses nothing over time.
    rounding: str = "stochastic"

    @classmethod
    def parse(
        cls, text: str, block: int = DEFAULT_BLOCK, rounding: str = "stochastic"
    ) -> CodecSpec:
        if block < 1:
            raise ConfigError(f"codec block size must be >= 1, got {block}")
        if rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if text in VALUE_CODECS:
            return cls(text, block=block, rounding=rounding)
        head, _, values = text.partition("+")
        name, _, fraction = head.partition(":")
        if name != CODEC_TOPK or not fraction:
            raise ConfigError(f"unknown codec {text!r}: use f32, q8, q4 or topk:F[+q8|+q4]")
        try:
            share = float(fraction)
        except ValueError:
            raise ConfigError(f"codec {text!r}: {fraction!r} is not a fraction") from None
        if not 0 < share <= 1:
            raise ConfigError(f"codec {text!r}: the fraction must be in (0, 1]")
        values = values or CODEC_F32
        if values not in VALUE_CODECS:
            raise ConfigError(f"codec {text!r}: values codec must be f32, q8 or q4")
        return cls(CODEC_TOPK, share, values, block, rounding)

    def __str__(self) -> str:
        if self.codec != CODEC_TOPK:
            return self.codec
        return f"topk:{self.fraction:g}+{self.values_codec}"

    @property
    def lossless(self) -> bool:
        return self.codec == CODEC_F32


def _encode_values(
    name: str, shape: tuple[int, ...], values: np.ndarray, codec: str, spec: CodecSpec, seed: int
) -> tuple[WireTensor, np.ndarray]:
    """(tensor with `values` in `codec`, the values as the receiver will decode them)."""
    if codec == CODEC_F32:
        return encode_f32(name, values.reshape(shape)), values
    block = spec.block
    scales, codes = quantize(values, _BITS[codec], block, seed, spec.rounding)
    decoded = dequantize(scales, codes, _BITS[codec], block, values.size)
    tensor = WireTensor(
        name,
        FLOAT32,
        shape,
        codec,
        codes.tobytes(),
        block=block,
        scales=scales.astype("<f4").tobytes(),
    )
    return tensor, decoded


def compress(
    delta: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray],
    spec: CodecSpec,
    seed: int,
) -> tuple[tuple[WireTensor, ...], dict[str, np.ndarray]]:
    """Encode `delta` under `spec` with error feedback; returns (tensors, new residual).

    `residual` maps a tensor name to what earlier updates left out (missing
    names count as zero). The new residual holds, per tensor, exactly
    `delta + residual - decoded(sent)` in float32.
    """
    if spec.lossless:
        return tuple(encode_f32(name, values) for name, values in delta.items()), {}
    tensors = []
    new_residual: dict[str, np.ndarray] = {}
    for index, (name, values) in enumerate(delta.items()):
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        carried = residual.get(name)
        left = (
            np.zeros_like(flat)
            if carried is None or carried.size != flat.size
            else np.array(carried, dtype=np.float32).reshape(-1)
        )
        tensor_seed = (seed * 1_000_003 + index) % 2**63
        shape = tuple(int(d) for d in values.shape)
        if spec.codec == CODEC_TOPK:
            k = min(flat.size, max(1, math.ceil(spec.fraction * flat.size)))
            indices, sent = topk_with_feedback(flat, left, k)  # `left` becomes the residual
            inner, decoded = _encode_values(name, (k,), sent, spec.values_codec, spec, tensor_seed)
            left[indices] += sent - decoded  # the values' own rounding error, fed back too
            tensor = WireTensor(
                name,
                FLOAT32,
                shape,
                CODEC_TOPK,
                inner.data,
                block=inner.block,
                scales=inner.scales,
                indices=indices.astype("<u4").tobytes(),
                values_codec=spec.values_codec,
            )
        else:
            corrected = flat + left
            tensor, decoded = _encode_values(name, shape, corrected, spec.codec, spec, tensor_seed)
            left = corrected - decoded
        tensors.append(tensor)
        new_residual[name] = left.reshape(values.shape)
    return tuple(tensors), new_residual
