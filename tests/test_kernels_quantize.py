"""Blockwise quantization kernels against the numpy references in tests/naive_quantize.py."""

from __future__ import annotations

import os
import subprocess
import sys

import naive_quantize as naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.quantize import (
    accumulate,
    code_bytes,
    dequantize,
    dequantize_accumulate,
    n_blocks,
    quantize,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)  # 2**-126

sizes = st.sampled_from([0, 1, 2, 7, 63, 64, 65, 255, 256, 257]) | st.integers(0, 600)
block_sizes = st.sampled_from([1, 7, 64, 256])
bit_widths = st.sampled_from([8, 4])
# 1e-40 and 1e-44 are subnormal values; 1e-38 gives subnormal scales.
magnitudes = st.sampled_from([1e-44, 1e-40, 1e-38, 1e-3, 1.0, 1e30, 1e38, FLOAT32_MAX])


@st.composite
def vectors(draw: st.DrawFn) -> np.ndarray:
    """Random float32 vectors with zero stretches and the block maximum at either sign."""
    n = draw(sizes)
    magnitude = draw(magnitudes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = (rng.uniform(-1, 1, n) * magnitude).astype(np.float32)
    if n and draw(st.booleans()):
        start = draw(st.integers(0, n - 1))
        values[start : start + draw(st.integers(1, 300))] = 0  # whole zero blocks
    if n and draw(st.booleans()):
        values[draw(st.integers(0, n - 1))] = np.float32(magnitude) * draw(st.sampled_from([1, -1]))
    return values


roundings = st.sampled_from(["stochastic", "nearest"])


@settings(max_examples=300, deadline=None)
@given(vectors(), bit_widths, block_sizes, st.integers(-(2**63), 2**64 - 1), roundings)
def test_quantize_and_dequantize_match_the_reference_bit_for_bit(
    values: np.ndarray, bits: int, block: int, seed: int, rounding: str
) -> None:
    n = values.size
    scales, codes = quantize(values, bits, block, seed, rounding)
    ref_scales, ref_codes = naive.quantize(values, bits, block, seed, rounding)
    assert scales.dtype == np.float32 and scales.shape == (n_blocks(n, block),)
    assert codes.dtype == np.uint8 and codes.shape == (code_bytes(n, bits),)
    np.testing.assert_array_equal(scales, ref_scales)
    np.testing.assert_array_equal(codes, ref_codes)
    decoded = dequantize(scales, codes, bits, block, n)
    assert decoded.dtype == np.float32 and decoded.shape == (n,)
    np.testing.assert_array_equal(decoded, naive.dequantize(scales, codes, bits, block, n))
    assert np.isfinite(decoded).all()


def assert_round_trip_within(
    values: np.ndarray, bits: int, block: int, seed: int, rounding: str, steps: float
) -> None:
    """Every decoded value lies within ``steps`` steps of its input, plus float32 rounding."""
    scales, codes = quantize(values, bits, block, seed, rounding)
    decoded = dequantize(scales, codes, bits, block, values.size).astype(np.float64)
    step = np.repeat(scales.astype(np.float64), block)[: values.size]
    error = np.abs(decoded - values.astype(np.float64))
    qmax = naive.QMAX[bits]
    # Rounding on top of the ideal grid point, in steps: the quotient
    # x * float32(1/s) is two float32 roundings (a relative 2**-23 of
    # |x/s| <= qmax); the decoded c * s one more (2**-24 of qmax); adding u
    # (or 1/2) rounds once at magnitude <= 128 (2**-17).
    rounding_slack = 3 * qmax * 2.0**-24 + 2.0**-17
    bound = step * (steps + rounding_slack)
    # A subnormal scale was rounded to a multiple of 2**-149, so the largest
    # values of the block may have been clamped by up to qmax half-ulps (see
    # the module docstring); nowhere else may the error pass the bound.
    subnormal = step < SMALLEST_NORMAL
    bound[subnormal] += qmax * 2.0**-150
    assert np.all(error <= bound)
    # The codes stay in [-qmax, qmax]; a 4-bit nibble is never 0.
    integer = naive.unpack(codes, bits, values.size)
    assert np.all(np.abs(integer) <= qmax)
    assert np.all(decoded[step == 0] == 0)


@settings(max_examples=300, deadline=None)
@given(vectors(), bit_widths, block_sizes, st.integers(0, 2**64 - 1))
def test_stochastic_round_trip_error_is_at_most_one_step(
    values: np.ndarray, bits: int, block: int, seed: int
) -> None:
    assert_round_trip_within(values, bits, block, seed, "stochastic", steps=1.0)


@settings(max_examples=300, deadline=None)
@given(vectors(), bit_widths, block_sizes)
def test_nearest_round_trip_error_is_at_most_half_a_step(
    values: np.ndarray, bits: int, block: int
) -> None:
    assert_round_trip_within(values, bits, block, 0, "nearest", steps=0.5)


def test_half_step_bound_is_tight_for_nearest_and_not_met_by_stochastic() -> None:
    # x = 1.5 steps: nearest lands on 2 (error 0.5 steps, halves round up);
    # stochastic lands on 1 or 2, so some seeds err by ~0.5 and the bound
    # is only "one step" for it; x = 1.25 steps tells the two apart.
    values = np.float32([127, 1.25, -1.25, 1.5])
    scales, codes = quantize(values, 8, 4, 0, "nearest")
    np.testing.assert_array_equal(naive.unpack(codes, 8, 4), [127, 1, -1, 2])
    stochastic = {
        tuple(naive.unpack(quantize(values, 8, 4, seed)[1], 8, 4)[1:3]) for seed in range(200)
    }
    assert stochastic == {(1, -1), (2, -1), (1, -2), (2, -2)}


def test_nearest_ignores_the_seed() -> None:
    values = np.random.default_rng(3).standard_normal(999).astype(np.float32)
    for bits in (8, 4):
        first = quantize(values, bits, 64, 1, "nearest")
        np.testing.assert_array_equal(first[1], quantize(values, bits, 64, 2, "nearest")[1])


@pytest.mark.parametrize(("bits", "block"), [(8, 7), (4, 7), (4, 64), (8, 256)])
def test_stochastic_rounding_is_unbiased(bits: int, block: int) -> None:
    rng = np.random.default_rng(bits * block)
    values = rng.uniform(-1, 1, 3 * block + 5).astype(np.float32)
    seeds = 2000
    decoded = np.array(
        [
            dequantize(*quantize(values, bits, block, s), bits, block, values.size)
            for s in seeds_of(seeds)
        ]
    ).astype(np.float64)
    scales, _ = quantize(values, bits, block, 0)
    step = np.repeat(scales.astype(np.float64), block)[: values.size]
    # Each draw is x rounded down or up to a multiple of the step, so its
    # standard deviation is at most step / 2: the mean of `seeds` draws lies
    # within 6 standard errors of x. Round-to-nearest would be off by up to step / 2.
    bias = np.abs(decoded.mean(axis=0) - values)
    assert np.all(bias <= 6 * (step / 2) / np.sqrt(seeds) + 1e-7)
    # and every single draw is one of the two neighbours of x
    assert np.all(np.abs(decoded - values) <= step * (1 + 1e-6))


def seeds_of(count: int) -> range:
    return range(10_000, 10_000 + count)


def test_every_block_edge_and_odd_count_in_the_4_bit_layout() -> None:
    values = np.array([7, -7, 0, 3, -1, 5, 2], np.float32)
    for block in range(1, 9):
        for seed in range(5):
            scales, codes = quantize(values, 4, block, seed)
            np.testing.assert_array_equal(codes, naive.quantize(values, 4, block, seed)[1])
    # one block of scale 1: every x / s is an integer, so the codes are x exactly
    scales, codes = quantize(values, 4, 7, 0)
    np.testing.assert_array_equal(codes, [0x1F, 0xB8, 0xD7, 0x0A])
    np.testing.assert_array_equal(dequantize(scales, codes, 4, 7, 7), values)


def test_pinned_bytes_of_both_layouts() -> None:
    # q8: two's complement bytes
    decoded = dequantize(np.float32([0.5]), np.uint8([0x81, 0xFF, 0x00, 0x7F, 0x02]), 8, 8, 5)
    np.testing.assert_array_equal(decoded, np.float32([-63.5, -0.5, 0, 63.5, 1]))
    # q4: element 2m in the low nibble of byte m, stored as c + 8; odd count
    # (a 0 nibble is outside the layout; it decodes to -8, like any other nibble c + 8)
    decoded = dequantize(np.float32([2, 1, 1]), np.uint8([0x9F, 0x01, 0x0E]), 4, 2, 5)
    np.testing.assert_array_equal(decoded, np.float32([14, 2, -7, -8, 6]))
    # exact inputs encode to exact codes: x / s is an integer, so u never carries
    scales, codes = quantize(np.float32([7, -7, 1, 0, -3]), 4, 8, 123)
    np.testing.assert_array_equal(scales, [1.0])
    np.testing.assert_array_equal(codes, [0x1F, 0x89, 0x05])
    scales, codes = quantize(np.float32([127, -127, -1, 0]), 8, 2, 5)
    np.testing.assert_array_equal(scales, [1.0, 1 / np.float32(127)])
    np.testing.assert_array_equal(codes[:2], [0x7F, 0x81])


def test_empty_and_all_zero_inputs() -> None:
    for bits in (8, 4):
        scales, codes = quantize(np.empty(0, np.float32), bits, 4, 0)
        assert scales.shape == (0,) and codes.shape == (0,)
        assert dequantize(scales, codes, bits, 4, 0).shape == (0,)
        scales, codes = quantize(np.zeros(9, np.float32), bits, 4, 3)
        assert not scales.any()
        assert not naive.unpack(codes, bits, 9).any()
        np.testing.assert_array_equal(dequantize(scales, codes, bits, 4, 9), np.zeros(9))


def test_largest_float32_never_decodes_to_infinity() -> None:
    values = np.float32([FLOAT32_MAX, -FLOAT32_MAX, 1])
    for bits in (8, 4):
        for seed in range(50):
            scales, codes = quantize(values, bits, 3, seed)
            assert np.isfinite(dequantize(scales, codes, bits, 3, 3)).all()


@settings(max_examples=100, deadline=None)
@given(vectors(), bit_widths, block_sizes, st.integers(0, 2**32), st.floats(-4, 4, width=32))
def test_fused_accumulate_equals_accumulating_the_decoded_array(
    values: np.ndarray, bits: int, block: int, seed: int, coefficient: float
) -> None:
    scales, codes = quantize(values, bits, block, seed)
    acc = np.random.default_rng(seed).standard_normal(values.size).astype(np.float32)
    decoded = dequantize(scales, codes, bits, block, values.size)
    with np.errstate(over="ignore"):  # values near float32's largest may overflow
        expected = acc + np.float32(coefficient) * decoded
    scales_before, codes_before = scales.copy(), codes.copy()
    with np.errstate(over="ignore"):  # as plain Python (NUMBA_DISABLE_JIT) too
        dequantize_accumulate(acc, coefficient, scales, codes, bits, block)
    np.testing.assert_array_equal(acc, expected)
    np.testing.assert_array_equal(scales, scales_before)
    np.testing.assert_array_equal(codes, codes_before)


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(0, 2**32), st.floats(-4, 4, width=32))
def test_plain_accumulate_is_numpys_axpy_in_float32(n: int, seed: int, coefficient: float) -> None:
    acc, values = np.random.default_rng(seed).standard_normal((2, n)).astype(np.float32)
    expected = acc + np.float32(coefficient) * values
    accumulate(acc, coefficient, values)
    np.testing.assert_array_equal(acc, expected)


def test_wire_buffers_are_accepted_read_only() -> None:
    values = np.random.default_rng(0).standard_normal(101).astype(np.float32)
    scales, codes = quantize(values, 4, 16, 9)
    wire_scales = np.frombuffer(scales.tobytes(), dtype="<f4").astype(np.float32)
    wire_codes = np.frombuffer(codes.tobytes(), dtype=np.uint8)
    assert not wire_codes.flags.writeable
    acc = np.zeros(101, np.float32)
    dequantize_accumulate(acc, 1.0, wire_scales, wire_codes, 4, 16)
    np.testing.assert_array_equal(acc, dequantize(wire_scales, wire_codes, 4, 16, 101))


def test_a_seed_fixes_the_codes_and_another_seed_changes_them() -> None:
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    for bits in (8, 4):
        first = quantize(values, bits, 64, 42)
        again = quantize(values.copy(), bits, 64, 42)
        other = quantize(values, bits, 64, 43)
        np.testing.assert_array_equal(first[1], again[1])
        assert not np.array_equal(first[1], other[1])
        # the seed is taken mod 2**64
        np.testing.assert_array_equal(quantize(values, bits, 64, 42 - 2**64)[1], first[1])


_DIGEST = """
import hashlib, numpy as np
from fedbus.kernels.quantize import quantize
values = np.random.default_rng(5).standard_normal(777).astype(np.float32)
h = hashlib.sha256()
for bits in (8, 4):
    for block in (1, 7, 64):
        for rounding in ("stochastic", "nearest"):
            scales, codes = quantize(values, bits, block, 2**63 + 11, rounding)
            h.update(scales.tobytes()); h.update(codes.tobytes())
print(h.hexdigest())
"""


def test_same_codes_with_and_without_the_jit() -> None:
    digests = []
    for disable in ("0", "1"):
        env = {**os.environ, "NUMBA_DISABLE_JIT": disable}
        done = subprocess.run(
            [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
        )
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1]


def _encoded(bits: int = 8) -> dict:
    return {
        "scales": np.ones(3, np.float32),
        "codes": np.zeros(10 if bits == 8 else 5, np.uint8),
        "bits": bits,
        "block_size": 4,
        "n": 10,
    }


MALFORMED = {
    "short codes": ({"codes": np.zeros(9, np.uint8)}, "code bytes"),
    "long codes": ({"codes": np.zeros(11, np.uint8)}, "code bytes"),
    "4-bit codes of 8-bit length": ({"bits": 4}, "code bytes"),
    "too few scales": ({"scales": np.ones(2, np.float32)}, "scales for"),
    "too many scales": ({"scales": np.ones(4, np.float32)}, "scales for"),
    "negative scale": ({"scales": np.float32([1, -1, 1])}, "finite and >= 0"),
    "NaN scale": ({"scales": np.float32([1, np.nan, 1])}, "finite and >= 0"),
    "inf scale": ({"scales": np.float32([1, np.inf, 1])}, "finite and >= 0"),
    "bits 2": ({"bits": 2}, "bits"),
    "bits True": ({"bits": True}, "bits"),
    "block 0": ({"block_size": 0}, "block_size"),
    "block float": ({"block_size": 4.0}, "block_size"),
    "negative n": ({"n": -1}, "n must be"),
    "scales float64": ({"scales": np.ones(3)}, "float32"),
    "codes int8": ({"codes": np.zeros(10, np.int8)}, "uint8"),
    "codes 2-D": ({"codes": np.zeros((2, 5), np.uint8)}, "1-D"),
    "codes strided": ({"codes": np.zeros(20, np.uint8)[::2]}, "C-contiguous"),
    "codes bytes": ({"codes": bytes(10)}, "numpy array"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_encodings_are_refused(case: tuple) -> None:
    changes, message = case
    args = _encoded() | changes
    with pytest.raises(KernelInputError, match=message):
        dequantize(args["scales"], args["codes"], args["bits"], args["block_size"], args["n"])
    if "n" not in changes:
        with pytest.raises(KernelInputError, match=message):
            acc = np.zeros(10, np.float32)
            dequantize_accumulate(
                acc, 1.0, args["scales"], args["codes"], args["bits"], args["block_size"]
            )
            assert not acc.any()


@pytest.mark.parametrize(
    ("acc", "message"),
    [
        (np.zeros(11, np.float32), "scales for|code bytes"),
        (np.zeros(10, np.float64), "float32"),
        (np.zeros(20, np.float32)[::2], "C-contiguous"),
    ],
)
def test_fused_accumulate_checks_the_accumulator(acc: np.ndarray, message: str) -> None:
    args = _encoded()
    with pytest.raises(KernelInputError, match=message):
        dequantize_accumulate(acc, 1.0, args["scales"], args["codes"], 8, 4)


def test_read_only_accumulator_and_bad_coefficient_are_refused() -> None:
    args = _encoded()
    frozen = np.zeros(10, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        dequantize_accumulate(frozen, 1.0, args["scales"], args["codes"], 8, 4)
    with pytest.raises(KernelInputError, match="writeable"):
        accumulate(frozen, 1.0, np.zeros(10, np.float32))
    with pytest.raises(KernelInputError, match="coefficient"):
        accumulate(np.zeros(10, np.float32), "x", np.zeros(10, np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "bits", "block", "seed", "message"),
    [
        (np.float32([1, np.nan]), 8, 4, 0, "finite"),
        (np.float32([1, 2, 3, -np.inf]), 4, 2, 0, "block 1"),
        (np.zeros(4, np.float64), 8, 4, 0, "float32"),
        (np.zeros(4, np.float32), 16, 4, 0, "bits"),
        (np.zeros(4, np.float32), 8, 0, 0, "block_size"),
        (np.zeros(4, np.float32), 8, 4, 1.5, "seed"),
    ],
)
def test_quantize_refuses_bad_inputs(
    values: np.ndarray, bits: int, block: int, seed: int, message: str
) -> None:
    with pytest.raises(KernelInputError, match=message):
        quantize(values, bits, block, seed)


def test_quantize_refuses_an_unknown_rounding() -> None:
    with pytest.raises(KernelInputError, match="rounding must be one of stochastic, nearest"):
        quantize(np.zeros(4, np.float32), 8, 4, 0, "up")


def test_accumulate_refuses_mismatched_shapes() -> None:
    with pytest.raises(KernelInputError, match="shape"):
        accumulate(np.zeros(3, np.float32), 1.0, np.zeros(4, np.float32))
