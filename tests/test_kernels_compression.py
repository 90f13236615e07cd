"""Quantization, top-k and optimizer kernels against plain numpy references."""

from __future__ import annotations

import naive_quantize
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.norms import clip_by_norm, l2_norm
from fedbus.kernels.optimizers import adam_step, sgd_momentum_step, yogi_step
from fedbus.kernels.quantize import (
    accumulate,
    dequantize,
    dequantize_accumulate,
    quantize,
    sum_of_squares,
)
from fedbus.kernels.sparsify import scatter_accumulate, topk_indices, topk_with_feedback


def _reference_quantize(values, bits, block, seed):  # type: ignore[no-untyped-def]
    scales, data = naive_quantize.quantize(values, bits, block, seed)
    codes = naive_quantize.unpack(data, bits, values.size)
    return scales, codes, naive_quantize.dequantize(scales, data, bits, block, values.size)


sizes = st.integers(0, 700)
blocks = st.sampled_from([1, 7, 64, 256])
magnitudes = st.sampled_from([1e-38, 1e-3, 1.0, 1e30, 3e38])


@settings(max_examples=60, deadline=None)
@given(
    n=sizes, block=blocks, bits=st.sampled_from([8, 4]), scale=magnitudes, seed=st.integers(0, 99)
)
def test_quantize_and_dequantize_match_the_reference(n, block, bits, scale, seed) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    values = (rng.uniform(-1, 1, n) * scale).astype(np.float32)
    if n > 3:
        values[: n // 3] = 0  # an all-zero stretch (a whole block when block is small)
    scales, codes = quantize(values, bits, block, seed)
    ref_scales, ref_codes, ref_decoded = _reference_quantize(values, bits, block, seed)
    np.testing.assert_array_equal(scales, ref_scales)
    decoded = dequantize(scales, codes, bits, block, n)
    np.testing.assert_array_equal(decoded, ref_decoded)
    step = np.repeat(scales, block)[:n]
    # Within one step; below float32's normal range (1.2e-38) the step itself is
    # subnormal and rounded to a multiple of 1.4e-45, so allow qmax of those.
    subnormal_slack = 128 * np.float32(1.4e-45)
    assert np.all(np.abs(decoded - values) <= step * 1.0001 + subnormal_slack)
    acc = rng.standard_normal(n).astype(np.float32)
    expected = acc + np.float32(0.3) * decoded
    dequantize_accumulate(acc, 0.3, scales, codes, bits, block)
    np.testing.assert_array_equal(acc, expected)


def test_stochastic_rounding_is_unbiased() -> None:
    values = np.linspace(-1, 1, 257, dtype=np.float32)
    mean = np.mean(
        [dequantize(*quantize(values, 4, 257, s), 4, 257, 257) for s in range(3000)], axis=0
    )
    step = 1 / 7  # one block: scale = max|x| / 7
    # Each decoded value is x rounded up or down by at most a step, so its
    # standard deviation is at most step / 2; the mean of 3000 seeds must sit
    # within 6 standard errors of x. Round-to-nearest would be off by up to step / 2.
    assert np.abs(mean - values).max() < 6 * (step / 2) / np.sqrt(3000)


def test_plain_accumulate_is_numpys_axpy() -> None:
    rng = np.random.default_rng(0)
    acc, values = rng.standard_normal((2, 1001)).astype(np.float32)
    expected = acc + np.float32(0.7) * values
    accumulate(acc, 0.7, values)
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros(2, np.float32), np.zeros(9, np.uint8), 8, 4, 10),  # short codes
        (np.zeros(4, np.float32), np.zeros(10, np.uint8), 8, 4, 10),  # wrong block count
        (np.float32([1, -1, 1]), np.zeros(10, np.uint8), 8, 4, 10),  # negative scale
        (np.float32([1, np.nan, 1]), np.zeros(10, np.uint8), 8, 4, 10),  # NaN scale
        (np.zeros(3, np.float32), np.zeros(5, np.uint8), 2, 4, 10),  # bits
        (np.zeros(3, np.float32), np.zeros(10, np.uint8), 4, 4, 10),  # 4-bit needs 5 bytes
    ],
)
def test_malformed_quantized_data_is_refused(args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KernelInputError):
        dequantize(*args)


@settings(max_examples=60, deadline=None)
@given(n=sizes, k=st.integers(0, 800), seed=st.integers(0, 99))
def test_topk_keeps_the_largest_and_feedback_conserves_mass(n, k, seed) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    delta = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal(n).astype(np.float32)
    corrected = delta + residual
    indices, sent = topk_with_feedback(delta, residual, k)
    kept = min(k, n)
    assert indices.size == kept and np.all(np.diff(indices.astype(np.int64)) > 0)
    if 0 < kept < n:
        assert np.abs(sent).min() >= np.abs(np.delete(corrected, indices)).max()
    rebuilt = residual.copy()
    scatter_accumulate(rebuilt, 1.0, indices, sent)
    np.testing.assert_array_equal(rebuilt, corrected)


def test_topk_edge_cases() -> None:
    empty = np.zeros(0, np.float32)
    assert topk_indices(empty, 3).size == 0
    assert topk_indices(np.float32([3, -5, 1]), 1).tolist() == [1]
    assert topk_indices(np.float32([3, -5, 1]), 9).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("indices", "values"),
    [
        (np.uint32([0, 10]), np.float32([1, 1])),  # out of range
        (np.uint32([3, 1]), np.float32([1, 1])),  # not increasing
        (np.uint32([2, 2]), np.float32([1, 1])),  # repeated
        (np.uint32([1]), np.float32([1, 1])),  # lengths differ
    ],
)
def test_scatter_refuses_bad_positions(indices, values) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KernelInputError):
        scatter_accumulate(np.zeros(10, np.float32), 1.0, indices, values)


def test_optimizer_steps_match_their_formulas() -> None:
    rng = np.random.default_rng(0)
    w0, g = rng.standard_normal((2, 33)).astype(np.float32)
    w, vel = w0.copy(), np.zeros(33, np.float32)
    for _ in range(3):
        sgd_momentum_step(w, g, vel, 0.1, 0.9)
    expected_vel = g * (1 + 0.9 + 0.81)
    np.testing.assert_allclose(vel, expected_vel, rtol=1e-6)
    np.testing.assert_allclose(w, w0 - 0.1 * g * (1 + 1.9 + 2.71), rtol=1e-5)
    for step_fn, yogi in ((adam_step, False), (yogi_step, True)):
        w, m, v = w0.copy(), np.zeros(33, np.float32), np.zeros(33, np.float32)
        rm, rv, rw = np.zeros(33), np.zeros(33), w0.astype(np.float64)
        for t in range(1, 4):
            step_fn(w, g, m, v, 0.01, 0.9, 0.99, 1e-3, t)
            rm = 0.9 * rm + 0.1 * g
            rv = rv - 0.01 * g**2 * np.sign(rv - g**2) if yogi else 0.99 * rv + 0.01 * g**2
            rate = 0.01 * np.sqrt(1 - 0.99**t) / (1 - 0.9**t)
            rw = rw - rate * rm / (np.sqrt(rv) + 1e-3)
        np.testing.assert_allclose(w, rw, rtol=1e-4, atol=1e-6)
    with pytest.raises(KernelInputError):
        adam_step(w, g, m, v, 0.01, 0.9, 0.99, 1e-3, 0)


@settings(max_examples=40, deadline=None)
@given(n=sizes, scale=magnitudes, seed=st.integers(0, 99))
def test_l2_norm_and_clipping_match_numpy_in_float64(n, scale, seed) -> None:  # type: ignore[no-untyped-def]
    values = (np.random.default_rng(seed).uniform(-1, 1, n) * scale).astype(np.float32)
    reference = float(np.sqrt(np.sum(values.astype(np.float64) ** 2)))
    assert l2_norm(values) == pytest.approx(reference, rel=1e-12)
    clipped = values.copy()
    factor = clip_by_norm(clipped, reference / 2)
    if reference > 0:
        assert factor == pytest.approx(0.5, rel=1e-12)
        assert l2_norm(clipped) == pytest.approx(reference / 2, rel=1e-6)
    with pytest.raises(KernelInputError):
        clip_by_norm(clipped, -1.0)


@settings(max_examples=40, deadline=None)
@given(
    n=sizes, block=blocks, bits=st.sampled_from([8, 4]), scale=magnitudes, seed=st.integers(0, 99)
)
def test_sum_of_squares_of_codes_is_that_of_code_times_scale(n, block, bits, scale, seed) -> None:  # type: ignore[no-untyped-def]
    values = (np.random.default_rng(seed).uniform(-1, 1, n) * scale).astype(np.float32)
    scales, codes = quantize(values, bits, block, seed)
    integer_codes = dequantize(np.ones_like(scales), codes, bits, block, n).astype(np.float64)
    exact = integer_codes * np.repeat(scales.astype(np.float64), block)[:n]
    got = sum_of_squares(scales, codes, bits, block, n)
    assert got == pytest.approx(float(np.sum(exact**2)), rel=1e-12, abs=1e-300)
    # The decoded float32 values differ from c * s by float32 rounding only.
    decoded = dequantize(scales, codes, bits, block, n).astype(np.float64)
    assert got == pytest.approx(float(np.sum(decoded**2)), rel=3e-7, abs=1e-80)
