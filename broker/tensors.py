"""Tensors as they travel: `{name, dtype, shape, codec, data, ...}` with raw bytes.

A `WireTensor` keeps the encoded bytes untouched so that the receiver can
validate the header (name, shape, codec, every byte length) before any
arithmetic, and so that the aggregator can decode a compressed update
straight into its buffer (`accumulate_into`) without a float32 copy of it.

Codecs (docs/PROTOCOL.md section 5):
- `f32`: raw little-endian float32.
- `q8`, `q4`: blockwise symmetric integers, a float32 scale per block of
  `block` elements (`scales`), codes in `data` (fedbus.kernels.quantize).
- `topk`: the k kept elements: `indices` (uint32 little-endian, strictly
  increasing) and their values in `data`, encoded with `values_codec`
  (`f32`, `q8` or `q4`, then with `block` and `scales` too).
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
CODEC_Q8 = "q8"
CODEC_Q4 = "q4"
CODEC_TOPK = "topk"
#: Codecs of dense values (also the allowed `values_codec` of `topk`).
VALUE_CODECS = frozenset({CODEC_F32, CODEC_Q8, CODEC_Q4})
SUPPORTED_CODECS = VALUE_CODECS | {CODEC_TOPK}
_BITS = {CODEC_Q8: 8, CODEC_Q4: 4}
_U32_LE = np.dtype("<u4")

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
    #: q8/q4 (also as `values_codec` of topk): elements per scale.
    block: int = 0
    #: q8/q4: one little-endian float32 scale per block.
    scales: bytes = b""
    #: topk: uint32 little-endian positions (row-major), strictly increasing.
    indices: bytes = b""
    #: topk: the codec of the kept values.
    values_codec: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def value_codec(self) -> str:
        """The codec of `data`: the tensor's own, or `values_codec` for topk."""
        return self.values_codec if self.codec == CODEC_TOPK else self.codec

    @property
    def value_count(self) -> int:
        """How many values `data` encodes (k for topk, else every element)."""
        return len(self.indices) // 4 if self.codec == CODEC_TOPK else self.size

    def check_layout(self) -> None:
        """Every length the header implies, checked before any byte is decoded."""
        where = f"tensor {self.name!r}"
        if self.dtype != FLOAT32:
            raise CodecError(f"{where}: unsupported dtype {self.dtype!r}")
        if self.codec not in SUPPORTED_CODECS:
            raise CodecError(f"{where}: unsupported codec {self.codec!r}")
        if self.codec == CODEC_TOPK:
            if self.values_codec not in VALUE_CODECS:
                raise CodecError(f"{where}: unsupported values_codec {self.values_codec!r}")
            if len(self.indices) % 4 or len(self.indices) // 4 > self.size:
                raise CodecError(
                    f"{where}: {len(self.indices)} index bytes for {self.size} elements"
                )
        elif self.indices or self.values_codec:
            raise CodecError(f"{where}: indices/values_codec belong to codec topk only")
        count, codec = self.value_count, self.value_codec
        if codec in _BITS:
            if self.block < 1:
                raise CodecError(f"{where}: codec {codec} needs a block size >= 1")
            blocks = -(-count // self.block)
            if len(self.scales) != 4 * blocks:
                raise CodecError(f"{where}: {len(self.scales)} scale bytes, expected {4 * blocks}")
            nbytes = count if codec == CODEC_Q8 else (count + 1) // 2
        else:
            if self.block or self.scales:
                raise CodecError(f"{where}: block/scales belong to codecs q8 and q4 only")
            nbytes = 4 * count
        if len(self.data) != nbytes:
            raise CodecError(
                f"{where}: {len(self.data)} data bytes, expected {nbytes} for "
                f"shape {list(self.shape)} codec {self.codec}"
            )
        if self.codec == CODEC_TOPK and self.indices:
            positions = self._indices()
            if int(positions[-1]) >= self.size or (
                positions.size > 1 and not bool((positions[1:] > positions[:-1]).all())
            ):
                raise CodecError(f"{where}: indices must be strictly increasing and < {self.size}")

    def expected_nbytes(self) -> int:
        """Bytes `data` must hold for this header (after `check_layout`)."""
        count, codec = self.value_count, self.value_codec
        if codec == CODEC_Q8:
            return count
        if codec == CODEC_Q4:
            return (count + 1) // 2
        return 4 * count

    def values(self) -> np.ndarray:
        """The encoded values as float32 (k of them for topk, else all, flat)."""
        codec = self.value_codec
        if codec == CODEC_F32:
            return np.frombuffer(self.data, dtype=_F32_LE).astype(np.float32, copy=False)
        from fedbus.kernels.quantize import dequantize

        return dequantize(
            np.frombuffer(self.scales, dtype=_F32_LE).astype(np.float32),
            np.frombuffer(self.data, dtype=np.uint8),
            _BITS[codec],
            self.block,
            self.value_count,
        )

    def _indices(self) -> np.ndarray:
        return np.frombuffer(self.indices, dtype=_U32_LE).astype(np.uint32, copy=False)

    def to_array(self) -> np.ndarray:
        """Decode to float32 of `shape` (for f32: read-only, sharing `data`'s memory)."""
        self.check_layout()
        if self.codec != CODEC_TOPK:
            return self.values().reshape(self.shape)
        dense = np.zeros(self.size, dtype=np.float32)
        from fedbus.kernels.sparsify import scatter_accumulate

        scatter_accumulate(dense, 1.0, self._indices(), self.values())
        return dense.reshape(self.shape)

    def sum_of_squares(self) -> float:
        """Sum of the squared decoded values in float64; q8/q4 without decoding.

        NaN or inf when a value (or a scale) is not finite.
        """
        self.check_layout()
        codec = self.value_codec
        values_or_codes = self.values() if codec == CODEC_F32 else None
        if values_or_codes is not None:
            from fedbus.kernels.norms import sum_of_squares as f32_sum_of_squares

            # One pass over the payload's own bytes in float64 lanes: about 4x
            # numpy's float64 einsum, and the same bits on every machine.
            return f32_sum_of_squares(np.ascontiguousarray(values_or_codes.reshape(-1)))
        scales = np.frombuffer(self.scales, dtype=_F32_LE).astype(np.float32)
        if not np.isfinite(scales).all():
            return math.nan
        from fedbus.kernels.quantize import sum_of_squares

        return sum_of_squares(
            scales,
            np.frombuffer(self.data, dtype=np.uint8),
            _BITS[codec],
            self.block,
            self.value_count,
        )

    def all_finite(self) -> bool:
        """No NaN or Inf would come out of decoding (checked without decoding q8/q4)."""
        if self.value_codec == CODEC_F32:
            return bool(np.isfinite(self.values()).all())
        return bool(np.isfinite(np.frombuffer(self.scales, dtype=_F32_LE)).all())

    def accumulate_into(self, acc: np.ndarray, coefficient: float) -> None:
        """acc += coefficient * decoded, in place, without a decoded copy of q8/q4 data.

        `acc` is the flat float32 accumulator of this tensor (size elements).
        """
        self.check_layout()
        from fedbus.kernels import quantize, sparsify

        if self.codec == CODEC_TOPK:
            sparsify.scatter_accumulate(acc, coefficient, self._indices(), self.values())
        elif self.codec == CODEC_F32:
            quantize.accumulate(acc, coefficient, self.values())
        else:
            quantize.dequantize_accumulate(
                acc,
                coefficient,
                np.frombuffer(self.scales, dtype=_F32_LE).astype(np.float32),
                np.frombuffer(self.data, dtype=np.uint8),
                _BITS[self.codec],
                self.block,
            )


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


def match_layout(tensors: tuple[WireTensor, ...], spec: WeightSpec) -> dict[str, WireTensor]:
    """The tensors by name in the model's order, checked against its layout.

    Raises ShapeMismatchError for a missing, extra or repeated name or a wrong
    shape, CodecError for a header whose lengths do not add up; nothing is
    decoded yet.
    """
    names = [t.name for t in tensors]
    if sorted(names) != sorted(spec) or len(set(names)) != len(names):
        raise ShapeMismatchError(f"tensor names {names} do not match the model's {list(spec)}")
    by_name = {}
    for tensor in tensors:
        expected = tuple(spec[tensor.name])
        if tensor.shape != expected:
            raise ShapeMismatchError(
                f"tensor {tensor.name!r} has shape {list(tensor.shape)}, model has {list(expected)}"
            )
        tensor.check_layout()
        by_name[tensor.name] = tensor
    return {name: by_name[name] for name in spec}


def decode_weights(tensors: tuple[WireTensor, ...], spec: WeightSpec) -> dict[str, np.ndarray]:
    """Decode tensors, in any codec, after checking them against the model's layout.

    Raises CodecError naming the first tensor that is missing, extra, of the
    wrong shape or dtype; the caller maps that to a rejection reason.
    """
    return {name: t.to_array() for name, t in match_layout(tensors, spec).items()}
