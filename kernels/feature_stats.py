"""Per-feature sufficient statistics, for federated normalization.

A node cannot send its rows, but it can send, per feature, the count of
present values, their sum and sum of squares, and their extremes. Those add
up across nodes: merging the statistics of every node's rows gives exactly
the statistics of all the rows together, from which the global mean and
population standard deviation follow (mean = sum / n, var = sum_sq / n -
mean**2). That is what lets every node scale its features the same way
without a row leaving its device (docs/PROTOCOL.md 7.7 and 10.5).

Missing cells are NaN and are skipped: they count nowhere. An infinite cell
counts as a value (its sum becomes infinite); the data sources refuse
infinities, so cleaned rows never hold one.

The variance formula loses about ``1e-16 * n * mean**2`` to cancellation: for
features whose mean dwarfs their spread, the pooled std is only good to about
``sqrt(1e-16 * n) * |mean|``. The wire format fixes this formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["FeatureStats", "GlobalStats", "feature_stats"]


@njit(**JIT_OPTIONS)
def _feature_stats_kernel(X, count, total, total_sq, low, high):
    """Accumulate every present cell of X into its column's statistics, row by row.

    Row by row because X is C-contiguous: the reads are sequential, and the
    per-feature accumulators (a few arrays of F float64) stay in cache.
    """
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            x = np.float64(X[i, j])
            if np.isnan(x):
                continue
            count[j] += 1
            total[j] += x
            total_sq[j] += x * x
            if x < low[j]:
                low[j] = x
            if x > high[j]:
                high[j] = x


def _vector(values: object, dtype: type, name: str) -> np.ndarray:
    array: np.ndarray = np.array(values, dtype=dtype)  # a private copy: the dataclass is frozen
    if array.ndim != 1:
        raise KernelInputError(f"{name} must be 1-D, got shape {array.shape}")
    array.setflags(write=False)
    return array


def _same_length(named: dict[str, np.ndarray]) -> None:
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) > 1:
        raise KernelInputError(f"statistics must have one entry per feature, got {lengths}")


@dataclass(frozen=True, eq=False)
class GlobalStats:
    """Global per-feature statistics every node scales by (pooled from all nodes).

    ``std`` is the population standard deviation. A feature no node had a
    value for has count 0, mean 0, std 1 and min = max = 0, so scaling by it
    changes nothing instead of dividing by zero (docs/PROTOCOL.md 10.5).
    Arrays are read-only copies.
    """

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mean", "std", "min", "max"):
            object.__setattr__(self, name, _vector(getattr(self, name), np.float64, name))
        object.__setattr__(self, "count", _vector(self.count, np.int64, "count"))
        _same_length({n: getattr(self, n) for n in ("count", "mean", "std", "min", "max")})

    @property
    def n_features(self) -> int:
        return len(self.count)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Sufficient statistics of one set of rows, per feature; they merge by addition.

    ``count`` (int64) is the number of present (non-NaN) values, ``sum`` and
    ``sum_sq`` (float64) their sum and sum of squares, ``min`` and ``max``
    their extremes. A feature without values has count 0, sums 0, min +inf
    and max -inf: the identities of the merge, so merging it changes nothing.
    Arrays are read-only copies.
    """

    count: np.ndarray
    sum: np.ndarray
    sum_sq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        for name in ("sum", "sum_sq", "min", "max"):
            object.__setattr__(self, name, _vector(getattr(self, name), np.float64, name))
        object.__setattr__(self, "count", _vector(self.count, np.int64, "count"))
        _same_length({n: getattr(self, n) for n in ("count", "sum", "sum_sq", "min", "max")})

    @property
    def n_features(self) -> int:
        return len(self.count)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both sets of rows together."""
        return FeatureStats.merge_all([self, other])

    @staticmethod
    def merge_all(parts: Sequence[FeatureStats]) -> FeatureStats:
        """The statistics of every part's rows together (parts added in order).

        Raises KernelInputError for no parts or parts of different widths.
        """
        if not parts:
            raise KernelInputError("merge_all needs at least one FeatureStats")
        widths = sorted({part.n_features for part in parts})
        if len(widths) > 1:
            raise KernelInputError(f"cannot merge statistics of different widths: {widths}")
        count = np.zeros(widths[0], dtype=np.int64)
        total = np.zeros(widths[0])
        total_sq = np.zeros(widths[0])
        low = np.full(widths[0], np.inf)
        high = np.full(widths[0], -np.inf)
        for part in parts:
            count += part.count
            total += part.sum
            total_sq += part.sum_sq
            np.minimum(low, part.min, out=low)
            np.maximum(high, part.max, out=high)
        return FeatureStats(count, total, total_sq, low, high)

    def to_global(self) -> GlobalStats:
        """Mean, population std, min and max per feature (see GlobalStats for count 0)."""
        seen = self.count > 0
        n = np.where(seen, self.count, 1).astype(np.float64)
        mean = np.where(seen, self.sum / n, 0.0)
        variance = np.maximum(self.sum_sq / n - mean * mean, 0.0)  # cancellation can dip below 0
        return GlobalStats(
            count=self.count,
            mean=mean,
            std=np.where(seen, np.sqrt(variance), 1.0),
            min=np.where(seen, self.min, 0.0),
            max=np.where(seen, self.max, 0.0),
        )


def feature_stats(X: np.ndarray) -> FeatureStats:
    """The sufficient statistics of the rows of ``X`` (float32 or float64, 2-D, C-contiguous).

    NaN cells are missing and skipped; sums are accumulated in float64.
    Raises KernelInputError for anything else than such an array.
    """
    if not isinstance(X, np.ndarray):
        raise KernelInputError(f"X must be a numpy array, got {type(X).__name__}")
    if X.dtype not in (np.float32, np.float64):
        raise KernelInputError(f"X must have dtype float32 or float64, got {X.dtype}")
    if X.ndim != 2:
        raise KernelInputError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if not X.flags.c_contiguous:
        raise KernelInputError("X must be C-contiguous (use np.ascontiguousarray)")
    n_features = X.shape[1]
    count = np.zeros(n_features, dtype=np.int64)
    total = np.zeros(n_features)
    total_sq = np.zeros(n_features)
    low = np.full(n_features, np.inf)
    high = np.full(n_features, -np.inf)
    _feature_stats_kernel(X, count, total, total_sq, low, high)
    return FeatureStats(count, total, total_sq, low, high)
