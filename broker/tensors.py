"""Tensors as they travel: `{name, dtype, shape, codec, data}` with raw bytes.

A `WireTensor` keeps the encoded bytes untouched so that the receiver can
validate the header (name, shape, codec, byte length) before any arithmetic,
and so that a later codec (q8, top-k) can be decoded straight into an
accumulator without an intermediate float32 copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbus.broker.errors import CodecError, ShapeMismatchError

#: The only logical dtype of model weights and deltas in protocol v1.
FLOAT32 = "float32"
#: Raw little-endian IEEE-754 float32, row-major.
CODEC_F32 = "f32"
SUPPORTED_CODECS = frozenset({CODEC_F32})

_F32_LE = np.dtype("<f4")

#: A model's layout: tensor name -> shape, in wire order.
WeightSpec = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class WireTensor:
    """One named tensor in its encoded form."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    codec: str
    data: bytes

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def expected_nbytes(self) -> int:
        """Bytes `data` must hold for this header; checked before any decode."""
        if self.codec == CODEC_F32:
            return 4 * self.size
        raise CodecError(f"tensor {self.name!r}: unsupported codec {self.codec!r}")

    def to_array(self) -> np.ndarray:
        """Decode to a read-only float32 array that shares memory with `data`."""
        if self.dtype != FLOAT32:
            raise CodecError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r}")
        if len(self.data) != self.expected_nbytes():
            raise CodecError(
                f"tensor {self.name!r}: {len(self.data)} data bytes, header says "
                f"{self.expected_nbytes()} for shape {list(self.shape)} codec {self.codec}"
            )
        values = np.frombuffer(self.data, dtype=_F32_LE).reshape(self.shape)
        return values.astype(np.float32, copy=False)


def encode_f32(name: str, array: np.ndarray) -> WireTensor:
    """Encode a float32 array as a raw `f32` tensor (one copy into the payload)."""
    values = np.asarray(array)
    if values.dtype != np.float32:
        raise CodecError(f"tensor {name!r}: expected float32, got {values.dtype}")
    data = np.ascontiguousarray(values, dtype=_F32_LE).tobytes()
    return WireTensor(name, FLOAT32, tuple(int(d) for d in values.shape), CODEC_F32, data)


def encode_weights(weights: Mapping[str, np.ndarray]) -> tuple[WireTensor, ...]:
    """Encode a name -> array mapping in its own order."""
    return tuple(encode_f32(name, array) for name, array in weights.items())


def decode_weights(tensors: tuple[WireTensor, ...], spec: WeightSpec) -> dict[str, np.ndarray]:
    """Decode tensors and check them against the model's layout.

    Raises CodecError naming the first tensor that is missing, extra, of the
    wrong shape or dtype; the caller maps that to a rejection reason.
    """
    names = [t.name for t in tensors]
    if sorted(names) != sorted(spec) or len(set(names)) != len(names):
        raise ShapeMismatchError(f"tensor names {names} do not match the model's {list(spec)}")
    arrays = {}
    for tensor in tensors:
        expected = tuple(spec[tensor.name])
        if tensor.shape != expected:
            raise ShapeMismatchError(
                f"tensor {tensor.name!r} has shape {list(tensor.shape)}, model has {list(expected)}"
            )
        arrays[tensor.name] = tensor.to_array()
    return {name: arrays[name] for name in spec}
