"""L2 norm and clipping by norm, against tests/naive_sparse.py."""

from __future__ import annotations

import math

import naive_sparse
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.norms import clip_by_norm, l2_norm

U32 = 2.0**-24  # float32 unit roundoff
TINY32 = 2.0**-149  # smallest float32 subnormal

sizes = st.sampled_from([0, 1, 2, 3, 7, 255, 256, 257]) | st.integers(0, 2000)
scales = st.sampled_from([0.0, 1e-45, 1e-38, 1e-20, 1.0, 1e20, 3e38])


def make_vector(seed: int, n: int, scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-1.0, 1.0, n) * scale).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=sizes, scale=scales)
def test_l2_norm_matches_float64_reference(seed: int, n: int, scale: float) -> None:
    # A sequential float64 sum of n squares carries a relative error below
    # n * 2**-53 ~ 2.2e-13 for n <= 2000; sqrt halves it.
    values = make_vector(seed, n, scale)
    norm = l2_norm(values)
    assert isinstance(norm, float)
    assert norm == pytest.approx(naive_sparse.l2_norm(values), rel=1e-12, abs=0.0)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=sizes, scale=scales)
def test_l2_norm_sums_in_the_documented_lane_order(seed: int, n: int, scale: float) -> None:
    # 16 lanes (element i in lane i mod 16), lanes added in order, then the
    # tail: the same bits on every machine and under NUMBA_DISABLE_JIT.
    values = make_vector(seed, n, scale).astype(np.float64)
    whole = n - n % 16
    lanes = np.zeros(16)
    for row in (values[:whole] ** 2).reshape(-1, 16):
        lanes += row
    total = 0.0
    for partial in [*lanes, *(values[whole:] ** 2)]:
        total += float(partial)
    assert l2_norm(values.astype(np.float32)) == math.sqrt(total)


def test_l2_norm_does_not_overflow_or_underflow() -> None:
    huge = np.full(1000, 3e38, np.float32)
    assert l2_norm(huge) == pytest.approx(float(np.float32(3e38)) * math.sqrt(1000), rel=1e-12)
    tiny = np.full(4, np.float32(TINY32))
    assert l2_norm(tiny) == pytest.approx(2 * TINY32, rel=1e-12)
    assert l2_norm(np.zeros(0, np.float32)) == 0.0
    assert l2_norm(np.float32([3, -4])) == 5.0


def test_l2_norm_reports_non_finite_values() -> None:
    assert math.isnan(l2_norm(np.float32([1, np.nan])))
    assert l2_norm(np.float32([1, -np.inf])) == math.inf


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=sizes,
    scale=scales,
    ratio=st.sampled_from([0.0, 1e-30, 0.1, 0.5, 0.999999, 1.0, 2.0]),
)
def test_clip_by_norm_scales_down_to_max_norm(
    seed: int, n: int, scale: float, ratio: float
) -> None:
    values = make_vector(seed, n, scale)
    before = values.copy()
    norm = naive_sparse.l2_norm(before)
    max_norm = ratio * norm

    factor = clip_by_norm(values, max_norm)

    if norm <= max_norm:
        if factor != 1.0:
            # ratio 1: the kernel's float64 sum and numpy's may differ in the last
            # bits (summation order), so the kernel may see a norm a hair above.
            assert factor == pytest.approx(1.0, rel=1e-12)
            return
        np.testing.assert_array_equal(values, before)  # untouched, bit for bit
        return
    assert factor == pytest.approx(max_norm / norm, rel=1e-12)  # norms agree to 1e-12
    # Each element is the float64 product rounded once to float32.
    np.testing.assert_array_equal(values, (before.astype(np.float64) * factor).astype(np.float32))
    # So |new_i - x_i f| <= U32 |x_i f| + TINY32 (underflow), and by the triangle
    # inequality norm(new) <= (1 + U32) max_norm + sqrt(n) TINY32 (+ float64 slack).
    assert l2_norm(values) <= (1 + U32) * max_norm * (1 + 1e-12) + math.sqrt(n) * TINY32


def test_clip_to_zero_and_to_a_larger_norm() -> None:
    values = np.float32([3, -4])
    assert clip_by_norm(values, 10.0) == 1.0
    assert clip_by_norm(values, 5.0) == 1.0
    np.testing.assert_array_equal(values, [3, -4])
    assert clip_by_norm(values, 2.5) == 0.5
    np.testing.assert_array_equal(values, [1.5, -2])
    assert clip_by_norm(values, 0.0) == 0.0
    assert not values.any()
    assert clip_by_norm(np.zeros(0, np.float32), 0.0) == 1.0


def test_clip_of_huge_values_stays_finite() -> None:
    values = np.full(64, -3e38, np.float32)
    factor = clip_by_norm(values, 1.0)
    assert 0 < factor < 1e-38
    assert l2_norm(values) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("max_norm", [-1.0, float("nan"), float("inf"), "1"])
def test_clip_refuses_bad_max_norm(max_norm: float) -> None:
    values = np.float32([3, -4])
    with pytest.raises(KernelInputError, match="max_norm"):
        clip_by_norm(values, max_norm)
    np.testing.assert_array_equal(values, [3, -4])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_refuses_non_finite_values_without_changing_them(bad: float) -> None:
    values = np.float32([3, bad, 4])
    with pytest.raises(KernelInputError, match="finite"):
        clip_by_norm(values, 1.0)
    np.testing.assert_array_equal(values, np.float32([3, bad, 4]))


def test_norm_kernels_refuse_bad_arrays() -> None:
    cases = [
        (np.zeros(3), "dtype float32"),
        (np.zeros((2, 2), np.float32), "1-D"),
        (np.zeros(6, np.float32)[::2], "C-contiguous"),
        ([1.0, 2.0], "numpy array"),
    ]
    for values, message in cases:
        with pytest.raises(KernelInputError, match=message):
            l2_norm(values)  # type: ignore[arg-type]
        with pytest.raises(KernelInputError, match=message):
            clip_by_norm(values, 1.0)  # type: ignore[arg-type]
    frozen = np.float32([3, 4])
    frozen.setflags(write=False)
    assert l2_norm(frozen) == 5.0
    with pytest.raises(KernelInputError, match="writeable"):
        clip_by_norm(frozen, 1.0)
