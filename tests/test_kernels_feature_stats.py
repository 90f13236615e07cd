"""Per-feature sufficient statistics, against numpy's nan-aware reductions.

The property federated normalization rests on: statistics of any split of the
rows, merged, give the mean and std of all the rows together.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.feature_stats import FeatureStats, GlobalStats, feature_stats

EPS = 2.0**-52  # float64 machine epsilon
NAN = np.nan

rows = st.sampled_from([0, 1, 2, 3, 7, 64, 257]) | st.integers(0, 300)
columns = st.sampled_from([0, 1, 2, 5, 17]) | st.integers(0, 12)
dtypes = st.sampled_from([np.float32, np.float64])
magnitudes = st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30])


def reference(X: np.ndarray) -> dict[str, np.ndarray]:
    """count, sum, sum_sq, min, max of the non-NaN cells of each column, in float64."""
    X = X.astype(np.float64)
    present = ~np.isnan(X)
    return {
        "count": present.sum(axis=0),
        "sum": np.nansum(X, axis=0),
        "sum_sq": np.nansum(X * X, axis=0),
        "min": np.where(present, X, np.inf).min(axis=0, initial=np.inf),
        "max": np.where(present, X, -np.inf).max(axis=0, initial=-np.inf),
        "abs_sum": np.nansum(np.abs(X), axis=0),
    }


def random_matrix(
    seed: int, shape: tuple[int, int], dtype: type, nan_fraction: float
) -> np.ndarray:
    """Uniform values, each cell of its own magnitude from 1e-30 to 1e30, NaN holes."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([1e-30, 1e-3, 1.0, 1e3, 1e30], size=shape)
    X = rng.uniform(-1.0, 1.0, shape) * scale
    X[rng.random(shape) < nan_fraction] = NAN
    return X.astype(dtype)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=rows,
    d=columns,
    dtype=dtypes,
    nan_fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
def test_feature_stats_match_the_numpy_reference(
    seed: int, n: int, d: int, dtype: type, nan_fraction: float
) -> None:
    X = random_matrix(seed, (n, d), dtype, nan_fraction)
    expected = reference(X)

    stats = feature_stats(X)

    np.testing.assert_array_equal(stats.count, expected["count"])
    assert stats.count.dtype == np.int64 and stats.sum.dtype == np.float64
    np.testing.assert_array_equal(stats.min, expected["min"])
    np.testing.assert_array_equal(stats.max, expected["max"])
    # Two sums of the same n terms in different orders differ by at most about
    # 2 n eps times the sum of the magnitudes.
    bound = 2 * max(n, 1) * EPS
    assert np.all(np.abs(stats.sum - expected["sum"]) <= bound * expected["abs_sum"])
    assert np.all(np.abs(stats.sum_sq - expected["sum_sq"]) <= bound * expected["sum_sq"])


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 300),
    d=st.integers(1, 6),
    k=st.integers(1, 8),
    dtype=dtypes,
    magnitude=magnitudes,
    offset=st.sampled_from([-3.0, -1.0, 1.0, 2.0, 3.0]),
    nan_fraction=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_merged_parts_give_the_pooled_mean_and_std(
    seed: int,
    n: int,
    d: int,
    k: int,
    dtype: type,
    magnitude: float,
    offset: float,
    nan_fraction: float,
) -> None:
    # Values magnitude * (offset + u), u uniform in [-1, 1], two rows planted at
    # u = -1 and u = +1 (never NaN) so that every column has spread: the
    # variance formula sum_sq / n - mean**2 then keeps ~13 digits (module doc).
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, (n, d))
    u[0], u[1] = -1.0, 1.0
    X: np.ndarray = (magnitude * (offset + u)).astype(dtype)
    holes = rng.random((n, d)) < nan_fraction
    holes[:2] = False
    X[holes] = NAN
    X = X[rng.permutation(n)]
    cuts = np.sort(rng.integers(0, n + 1, k - 1))  # parts may be empty
    parts = [feature_stats(np.ascontiguousarray(part)) for part in np.split(X, cuts)]

    pooled = FeatureStats.merge_all(parts).to_global()

    X64 = X.astype(np.float64)
    np.testing.assert_array_equal(pooled.count, (~np.isnan(X64)).sum(axis=0))
    np.testing.assert_allclose(pooled.mean, np.nanmean(X64, axis=0), rtol=1e-9, atol=0)
    np.testing.assert_allclose(pooled.std, np.nanstd(X64, axis=0), rtol=1e-9, atol=0)
    np.testing.assert_array_equal(pooled.min, np.nanmin(X64, axis=0))
    np.testing.assert_array_equal(pooled.max, np.nanmax(X64, axis=0))
    # merging one part at a time adds in the same order: the same bits
    one_by_one = parts[0]
    for part in parts[1:]:
        one_by_one = one_by_one.merge(part)
    np.testing.assert_array_equal(one_by_one.sum, FeatureStats.merge_all(parts).sum)


def test_the_protocol_example_by_hand() -> None:
    # docs/PROTOCOL.md 13.10: two features, one cell missing
    X = np.array([[20.0, 44.5], [22.0, NAN], [24.0, 45.5]])

    stats = feature_stats(X)

    np.testing.assert_array_equal(stats.count, [3, 2])
    np.testing.assert_array_equal(stats.sum, [66.0, 90.0])
    np.testing.assert_array_equal(stats.sum_sq, [1460.0, 4050.5])
    np.testing.assert_array_equal(stats.min, [20.0, 44.5])
    np.testing.assert_array_equal(stats.max, [24.0, 45.5])
    pooled = stats.to_global()
    np.testing.assert_allclose(pooled.mean, [22.0, 45.0], rtol=1e-15)
    np.testing.assert_allclose(pooled.std, [np.sqrt(8 / 3), 0.5], rtol=1e-12)


def test_a_column_without_values_is_the_merge_identity_and_scales_by_nothing() -> None:
    X = np.array([[1.0, NAN], [3.0, NAN]])

    stats = feature_stats(X)

    np.testing.assert_array_equal(stats.count, [2, 0])
    np.testing.assert_array_equal(stats.sum, [4.0, 0.0])
    np.testing.assert_array_equal(stats.sum_sq, [10.0, 0.0])
    np.testing.assert_array_equal(stats.min, [1.0, np.inf])
    np.testing.assert_array_equal(stats.max, [3.0, -np.inf])
    pooled = stats.to_global()
    np.testing.assert_array_equal(pooled.count, [2, 0])
    np.testing.assert_array_equal(pooled.mean, [2.0, 0.0])
    np.testing.assert_array_equal(pooled.std, [1.0, 1.0])  # second: no values, so 1
    np.testing.assert_array_equal(pooled.min, [1.0, 0.0])
    np.testing.assert_array_equal(pooled.max, [3.0, 0.0])
    other = feature_stats(np.array([[5.0, 7.0]]))
    merged = stats.merge(other)
    np.testing.assert_array_equal(merged.min, [1.0, 7.0])
    np.testing.assert_array_equal(merged.max, [5.0, 7.0])


def test_zero_rows_and_zero_columns() -> None:
    empty = feature_stats(np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(empty.count, [0, 0, 0])
    np.testing.assert_array_equal(empty.min, [np.inf] * 3)
    np.testing.assert_array_equal(empty.to_global().std, [1.0] * 3)
    no_features = feature_stats(np.zeros((4, 0)))
    assert no_features.n_features == 0 and no_features.to_global().mean.shape == (0,)


def test_one_value_or_equal_values_have_std_exactly_zero() -> None:
    pooled = feature_stats(np.array([[0.1, 7.0], [NAN, 7.0]])).to_global()
    np.testing.assert_array_equal(pooled.std, [0.0, 0.0])


def test_infinite_cells_count_as_values() -> None:
    # documented: the sources refuse infinities, the kernel does not hide them
    with np.errstate(invalid="ignore"):  # inf + -inf, as plain Python (NUMBA_DISABLE_JIT)
        stats = feature_stats(np.array([[1.0, np.inf], [2.0, -np.inf]]))
    np.testing.assert_array_equal(stats.count, [2, 2])
    assert np.isnan(stats.sum[1])
    np.testing.assert_array_equal(stats.max, [2.0, np.inf])


def test_statistics_are_read_only_copies() -> None:
    count = np.array([1, 2])
    stats = FeatureStats(count, [1.0, 2.0], [1.0, 4.0], [1.0, 1.0], [1.0, 1.0])
    count[0] = 99
    assert stats.count[0] == 1
    with pytest.raises(ValueError, match="read-only"):
        stats.sum[0] = 5.0


@pytest.mark.parametrize(
    ("X", "message"),
    [
        ([[1.0]], "numpy array"),
        (np.zeros((2, 2), np.int64), "dtype float32 or float64"),
        (np.zeros(3), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((3, 4))[:, ::2], "C-contiguous"),
        (np.asfortranarray(np.zeros((3, 4))), "C-contiguous"),
    ],
)
def test_feature_stats_refuses_bad_arrays(X: object, message: str) -> None:
    with pytest.raises(KernelInputError, match=message):
        feature_stats(X)  # type: ignore[arg-type]


def test_merging_checks_widths() -> None:
    two = feature_stats(np.zeros((1, 2)))
    three = feature_stats(np.zeros((1, 3)))
    with pytest.raises(KernelInputError, match=r"different widths: \[2, 3\]"):
        two.merge(three)
    with pytest.raises(KernelInputError, match="at least one"):
        FeatureStats.merge_all([])


def test_statistics_need_one_entry_per_feature() -> None:
    with pytest.raises(KernelInputError, match="one entry per feature"):
        FeatureStats([1], [1.0, 2.0], [1.0], [1.0], [1.0])
    with pytest.raises(KernelInputError, match="one entry per feature"):
        GlobalStats([1, 1], [0.0], [1.0], [0.0], [0.0])
    with pytest.raises(KernelInputError, match="1-D"):
        GlobalStats([[1]], [[0.0]], [[1.0]], [[0.0]], [[0.0]])
