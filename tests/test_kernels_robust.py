"""Coordinate-wise median and trimmed mean, against tests/naive_robust.py."""

from __future__ import annotations

import itertools

import naive_robust
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels import robust
from fedbus.kernels.robust import (
    coordinate_median,
    row_mean,
    sorting_network,
    trim_count,
    trimmed_mean,
)

# Without the JIT (the coverage pass) every kernel loop runs as Python:
# fewer examples and smaller exhaustive cases keep that pass within seconds.
JIT = not numba.config.DISABLE_JIT  # type: ignore[attr-defined]
EXAMPLES = 150 if JIT else 25
ZERO_ONE_MAX_K = 14 if JIT else 9

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38

sizes = st.sampled_from([0, 1, 2, 3, 63, 64, 65, 257]) | st.integers(0, 300)
scales = st.sampled_from([0.0, 1e-40, 1e-30, 1.0, 1e20, FLOAT32_MAX])
kinds = st.sampled_from(["normal", "ties", "extremes"])


def f32(values: object) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def make_rows(seed: int, k: int, d: int, scale: float, kind: str) -> np.ndarray:
    """K x d float32 rows: spread values, many ties, or a mix of extreme values."""
    rng = np.random.default_rng(seed)
    values: np.ndarray
    if kind == "normal":
        values = rng.uniform(-1.0, 1.0, (k, d)) * scale
    elif kind == "ties":
        values = rng.integers(-2, 3, (k, d)) * scale
    else:
        pool = np.array(
            [FLOAT32_MAX, -FLOAT32_MAX, 1e-40, -1e-40, 0.0, -0.0, 1.0, -1.0, 1e-45, 3e38]
        )
        values = rng.choice(pool, (k, d))
    with np.errstate(over="ignore"):
        return np.clip(values, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)


def assert_within_float32_rounding(got: np.ndarray, rows: np.ndarray, trim: int) -> None:
    # The kernel's float64 sum of n kept values is off the exact sum by at
    # most (n - 1) 2**-53 sum|x|; dividing and rounding to float32 then adds
    # one float32 rounding. Without cancellation the first term is far below
    # a float32 ulp, so this is "within 1 ulp" in the usual case.
    exact = naive_robust.trimmed_mean_exact(rows, trim)
    k = rows.shape[0]
    kept = np.sort(rows.astype(np.float64), axis=0)[trim : k - trim]
    n = k - 2 * trim
    slack = (n - 1) * 2.0**-53 * np.abs(kept).sum(axis=0) / n
    # One float32 step at |exact|, taken below it so that FLT_MAX has a finite step.
    magnitude = np.abs(exact).astype(np.float32)
    ulp = np.spacing(np.nextafter(magnitude, np.float32(0))).astype(np.float64)
    assert np.all(np.abs(got.astype(np.float64) - exact) <= ulp + slack)


# --- sorting_network ----------------------------------------------------------


@pytest.mark.parametrize("k", range(1, 65))
def test_sorting_network_is_a_valid_comparator_list(k: int) -> None:
    network = sorting_network(k)
    assert network.dtype == np.int64
    assert network.ndim == 2
    assert network.shape[1] == 2
    assert np.all(network[:, 0] < network[:, 1])
    assert np.all(network >= 0)
    assert np.all(network < k)
    assert not network.flags.writeable  # cached and shared


def test_sorting_network_sizes_are_batchers() -> None:
    # Batcher's odd-even merge sort uses 1, 5, 19, 63, 191 comparators for 2 .. 32.
    assert [len(sorting_network(k)) for k in (1, 2, 4, 8, 16, 32)] == [0, 1, 5, 19, 63, 191]
    assert sorting_network(2).tolist() == [[0, 1]]


@pytest.mark.parametrize("k", range(1, 15))
def test_sorting_network_sorts_every_zero_one_input(k: int) -> None:
    # The 0-1 principle: a comparator network that sorts all 2**k inputs of
    # zeros and ones sorts every input of k values.
    columns = np.array(list(itertools.product([0, 1], repeat=k)), dtype=np.int8).T
    ordered = naive_robust.apply_network(columns, sorting_network(k))
    assert np.all(np.diff(ordered, axis=0) >= 0)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 64))
def test_sorting_network_sorts_random_inputs(seed: int, k: int) -> None:
    values = np.random.default_rng(seed).integers(-5, 6, (k, 50)).astype(np.float64)
    values[:, 0] = np.random.default_rng(seed).standard_normal(k)
    ordered = naive_robust.apply_network(values, sorting_network(k))
    np.testing.assert_array_equal(ordered, np.sort(values, axis=0))


def test_sorting_network_refuses_bad_k() -> None:
    for bad in (0, -3, 2.0, True, "4"):
        with pytest.raises(KernelInputError, match="k must"):
            sorting_network(bad)  # type: ignore[arg-type]


# --- the kernels against the references ---------------------------------------


@pytest.mark.parametrize("k", range(1, ZERO_ONE_MAX_K + 1))
def test_kernels_on_every_zero_one_input(k: int) -> None:
    # The kernels sort part of each column in registers and run a reduced
    # comparator list (the median a further pruned one): on all 2**k columns of
    # zeros and ones, every statistic they read off must still be right.
    rows = np.array(list(itertools.product([0, 1], repeat=k)), dtype=np.float32).T.copy()
    np.testing.assert_array_equal(coordinate_median(rows), naive_robust.coordinate_median(rows))
    for trim in range((k + 1) // 2):
        np.testing.assert_array_equal(
            trimmed_mean(rows, trim), naive_robust.trimmed_mean(rows, trim)
        )


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 41), d=sizes, scale=scales, kind=kinds)
def test_median_matches_numpy(seed: int, k: int, d: int, scale: float, kind: str) -> None:
    rows = make_rows(seed, k, d, scale, kind)
    before = rows.copy()

    got = coordinate_median(rows)

    assert got.dtype == np.float32
    assert got.shape == (d,)
    # Exact for odd K (a value of the column) and for even K (one rounding of
    # the float64 midpoint, as numpy). Zeros compare equal whatever their sign.
    np.testing.assert_array_equal(got, naive_robust.coordinate_median(rows))
    np.testing.assert_array_equal(rows, before)  # input untouched


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 41),
    d=sizes,
    scale=scales,
    kind=kinds,
    fraction=st.floats(0.0, 1.0),
)
def test_trimmed_mean_matches_numpy(
    seed: int, k: int, d: int, scale: float, kind: str, fraction: float
) -> None:
    rows = make_rows(seed, k, d, scale, kind)
    trim = int(fraction * (k - 1) / 2)
    before = rows.copy()

    got = trimmed_mean(rows, trim)

    assert got.dtype == np.float32
    assert got.shape == (d,)
    # Same float64 additions in the same (ascending) order: the same bits.
    np.testing.assert_array_equal(got, naive_robust.trimmed_mean(rows, trim))
    assert_within_float32_rounding(got, rows, trim)
    np.testing.assert_array_equal(rows, before)


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 41), d=sizes, scale=scales, kind=kinds)
def test_row_mean_matches_numpy(seed: int, k: int, d: int, scale: float, kind: str) -> None:
    rows = make_rows(seed, k, d, scale, kind)
    np.testing.assert_array_equal(row_mean(rows), naive_robust.row_mean(rows))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 41),
    d=st.integers(0, 100),
    block=st.sampled_from([1, 2, 3, 8, 64]),
    kind=kinds,
)
def test_kernels_at_any_block_width(seed: int, k: int, d: int, block: int, kind: str) -> None:
    # The public wrappers pick blocks of 512 to 2048 columns; narrow blocks
    # put many block edges and short last blocks into small inputs.
    rows = make_rows(seed, k, d, 1.0, kind)
    trim = seed % ((k + 1) // 2)
    out = np.full(d, np.nan, dtype=np.float32)
    robust._median_kernel(rows, robust._kernel_network(k, True), block, out)
    np.testing.assert_array_equal(out, naive_robust.coordinate_median(rows))
    robust._trimmed_mean_kernel(rows, robust._kernel_network(k, False), trim, block, out)
    np.testing.assert_array_equal(out, naive_robust.trimmed_mean(rows, trim))
    robust._row_mean_kernel(rows, block, out)
    np.testing.assert_array_equal(out, naive_robust.row_mean(rows))


@pytest.mark.parametrize("k", [3, 20, 41])
def test_public_kernels_across_block_edges(k: int) -> None:
    d = 2 * robust._block_width(k) + 3  # two full blocks and a short one
    rows = make_rows(k, k, d, 1.0, "normal")
    np.testing.assert_array_equal(coordinate_median(rows), naive_robust.coordinate_median(rows))
    trim = trim_count(k, 0.2)
    np.testing.assert_array_equal(trimmed_mean(rows, trim), naive_robust.trimmed_mean(rows, trim))
    np.testing.assert_array_equal(row_mean(rows), naive_robust.row_mean(rows))


def test_block_width_keeps_the_scratch_small() -> None:
    for k in range(1, 200):
        width = robust._block_width(k)
        assert width & (width - 1) == 0  # a power of two
        assert 64 <= width <= 2048
        assert 4 * k * width <= 256 * 1024 or width == 64


def test_extreme_values_neither_overflow_nor_flush() -> None:
    big = np.float32(FLOAT32_MAX)
    tiny = np.float32(1e-40)  # subnormal
    rows = np.array(
        [
            [big, -big, tiny, -0.0, big, 1.0],
            [big, -big, 3 * tiny, 0.0, -big, 1.0],
        ],
        dtype=np.float32,
    )
    expected = np.array([big, -big, 2 * tiny, 0.0, 0.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(coordinate_median(rows), expected)
    np.testing.assert_array_equal(trimmed_mean(rows, 0), expected)
    np.testing.assert_array_equal(row_mean(rows), expected)
    assert np.all(np.isfinite(coordinate_median(rows)))


def test_odd_median_is_a_value_of_its_column() -> None:
    rows = f32([[3, -1e-40, 7], [1, 2e-40, -7], [2, 0, 0]])
    np.testing.assert_array_equal(coordinate_median(rows), f32([2, 0, 0]))
    np.testing.assert_array_equal(trimmed_mean(rows, 1), f32([2, 0, 0]))


def test_a_minority_of_huge_rows_cannot_move_the_robust_results() -> None:
    rng = np.random.default_rng(7)
    honest = rng.uniform(-1, 1, (15, 1000)).astype(np.float32)
    byzantine = np.full((5, 1000), 3e38, dtype=np.float32)
    rows = np.concatenate([honest, byzantine])
    low, high = honest.min(axis=0), honest.max(axis=0)
    for result in (coordinate_median(rows), trimmed_mean(rows, trim_count(20, 0.25))):
        assert np.all((low <= result) & (result <= high))
    assert np.all(row_mean(rows) > 1e37)  # the plain mean is dragged away


def test_one_row_and_no_columns() -> None:
    row = f32([[1.5, -0.0, 3e38]])
    for result in (coordinate_median(row), trimmed_mean(row, 0), row_mean(row)):
        np.testing.assert_array_equal(result, row[0])
        assert not np.shares_memory(result, row)
    empty = np.zeros((4, 0), dtype=np.float32)
    for result in (coordinate_median(empty), trimmed_mean(empty, 1), row_mean(empty)):
        assert result.shape == (0,)
        assert result.dtype == np.float32


def test_infinities_behave_as_in_numpy() -> None:
    inf = np.inf
    rows = f32([[inf, -inf, inf, -inf], [-inf, -inf, 2, inf], [inf, 5, 3, inf], [1, 6, 4, -inf]])
    with np.errstate(invalid="ignore"):
        median = coordinate_median(rows)
        np.testing.assert_array_equal(median, naive_robust.coordinate_median(rows))
        for trim in (0, 1):
            np.testing.assert_array_equal(
                trimmed_mean(rows, trim), naive_robust.trimmed_mean(rows, trim)
            )
    # The middle pairs: (1, inf) gives inf, (-inf, 5) gives -inf, (-inf, inf) is not a number.
    assert median[0] == np.inf
    assert median[1] == -np.inf
    assert np.isnan(median[3])


def test_nan_is_not_refused_and_stays_in_its_column() -> None:
    # NaN gives unspecified values in its own column; the other columns are exact.
    rows = f32([[np.nan, 1, 2], [0, 3, 4], [5, 6, 0]])
    with np.errstate(invalid="ignore"):
        median = coordinate_median(rows)
        trimmed = trimmed_mean(rows, 1)
    np.testing.assert_array_equal(median[1:], f32([3, 2]))
    np.testing.assert_array_equal(trimmed[1:], f32([3, 2]))


def test_out_is_filled_and_returned() -> None:
    rows = f32([[1, 2, 3], [3, 4, 5], [2, 0, 4]])
    calls = (
        lambda out: coordinate_median(rows, out=out),
        lambda out: trimmed_mean(rows, 1, out=out),
        lambda out: row_mean(rows, out=out),
    )
    for call in calls:  # all three are [2, 2, 4] here
        out = np.full(3, np.nan, dtype=np.float32)
        assert call(out) is out
        np.testing.assert_array_equal(out, f32([2, 2, 4]))


# --- trim_count ---------------------------------------------------------------


def test_trim_count_is_floor_of_beta_k() -> None:
    assert trim_count(20, 0.1) == 2
    assert trim_count(20, 0.2) == 4
    assert trim_count(20, 0.0) == 0
    assert trim_count(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004
    assert trim_count(19, 0.49) == 9
    assert trim_count(1, 0.49) == 0
    assert trim_count(np.int64(10), np.float32(0.25)) == 2


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 10**6), beta=st.floats(0.0, 0.5, exclude_max=True))
def test_trim_count_always_leaves_a_value(k: int, beta: float) -> None:
    trim = trim_count(k, beta)
    assert 0 <= 2 * trim < k
    assert trim <= beta * k


@pytest.mark.parametrize(
    ("k", "beta", "message"),
    [
        (10, 0.5, "beta"),
        (10, -0.1, "beta"),
        (10, float("nan"), "beta"),
        (10, "0.1", "beta"),
        (10, True, "beta"),
        (0, 0.1, "k must"),
        (2.0, 0.1, "k must"),
    ],
)
def test_trim_count_refuses_bad_arguments(k: object, beta: object, message: str) -> None:
    with pytest.raises(KernelInputError, match=message):
        trim_count(k, beta)  # type: ignore[arg-type]


# --- wrapper errors -----------------------------------------------------------


def test_kernels_refuse_bad_rows() -> None:
    good = np.zeros((3, 8), dtype=np.float32)
    cases = [
        (np.zeros((3, 8)), "dtype float32"),
        (np.zeros(8, dtype=np.float32), "2-D"),
        (np.zeros((2, 3, 8), dtype=np.float32), "2-D"),
        (good[:, ::2], "C-contiguous"),
        (np.asfortranarray(good), "C-contiguous"),
        (good.tolist(), "numpy array"),
        (np.zeros((0, 8), dtype=np.float32), "K >= 1"),
    ]
    for rows, message in cases:
        with pytest.raises(KernelInputError, match=message):
            coordinate_median(rows)  # type: ignore[arg-type]
        with pytest.raises(KernelInputError, match=message):
            trimmed_mean(rows, 0)  # type: ignore[arg-type]
        with pytest.raises(KernelInputError, match=message):
            row_mean(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("trim", [-1, 2, 3, 1.0, True, None])
def test_trimmed_mean_refuses_bad_trim(trim: object) -> None:
    rows = np.zeros((4, 5), dtype=np.float32)  # 0 <= 2 * trim < 4 allows trim 0 and 1
    with pytest.raises(KernelInputError, match="trim"):
        trimmed_mean(rows, trim)  # type: ignore[arg-type]


def test_kernels_refuse_bad_out() -> None:
    rows = np.zeros((3, 4), dtype=np.float32)
    readonly = np.zeros(4, dtype=np.float32)
    readonly.setflags(write=False)
    cases = [
        (np.zeros(4), "float32 array of shape \\(4,\\)"),
        (np.zeros(5, dtype=np.float32), "float32 array of shape \\(4,\\)"),
        (np.zeros((1, 4), dtype=np.float32), "float32 array of shape \\(4,\\)"),
        (np.zeros(8, dtype=np.float32)[::2], "C-contiguous"),
        (readonly, "writeable"),
        (rows[1], "overlap"),
        ([0.0] * 4, "numpy array"),
    ]
    for out, message in cases:
        with pytest.raises(KernelInputError, match=message):
            coordinate_median(rows, out=out)  # type: ignore[arg-type]
        with pytest.raises(KernelInputError, match=message):
            trimmed_mean(rows, 1, out=out)  # type: ignore[arg-type]
        with pytest.raises(KernelInputError, match=message):
            row_mean(rows, out=out)  # type: ignore[arg-type]
