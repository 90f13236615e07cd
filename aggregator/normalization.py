"""Federated normalization: pool the nodes' feature statistics into global ones.

Standardizing every node's data with its own mean and std would give each
node a different feature scale, and a model averaged across them would fit
none. Pooling count, sum and sum of squares per feature gives exactly the
mean and population variance of all rows together (the identities
mean = sum / n and var = sum_sq / n - mean**2), without a row leaving its
node. Pure: statistics in, Normalization out.
"""

from __future__ import annotations

import numpy as np

from fedbus.broker.errors import ProtocolError
from fedbus.broker.messages import FeatureStatistics, Normalization
from fedbus.kernels.feature_stats import FeatureStats

__all__ = ["StatsPool", "pool_statistics"]


def pool_statistics(parts: list[FeatureStatistics]) -> Normalization:
    """The global per-feature statistics of the union of every part's rows.

    The arithmetic is the feature-statistics kernel's merge (the same one a
    node would use on its own chunks); only the wire convention differs: a
    feature a node had no value for carries min = max = 0 on the wire and must
    not count as a value here. A feature no part had a value for gets count 0,
    mean 0, std 1, min = max = 0 (so scaling by it is the identity).
    """
    if not parts:
        raise ValueError("pool_statistics needs at least one node's statistics")
    merged = FeatureStats.merge_all([_kernel_stats(p) for p in parts]).to_global()
    return Normalization(
        nodes=len(parts),
        count=tuple(int(c) for c in merged.count),
        mean=tuple(merged.mean.tolist()),
        std=tuple(merged.std.tolist()),
        minimum=tuple(merged.min.tolist()),
        maximum=tuple(merged.max.tolist()),
    )


def _kernel_stats(stats: FeatureStatistics) -> FeatureStats:
    seen = np.asarray(stats.count) > 0
    return FeatureStats(
        np.asarray(stats.count, dtype=np.int64),
        np.asarray(stats.total, dtype=np.float64),
        np.asarray(stats.total_sq, dtype=np.float64),
        np.where(seen, stats.minimum, np.inf),
        np.where(seen, stats.maximum, -np.inf),
    )


class StatsPool:
    """Each node's latest statistics until `quorum` nodes have sent theirs.

    A node that sends again (a restart, a resend) replaces its earlier
    statistics rather than counting twice.
    """

    def __init__(self, n_features: int, quorum: int) -> None:
        if quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {quorum}")
        self.n_features = n_features
        self.quorum = quorum
        self.by_node: dict[str, FeatureStatistics] = {}

    def add(self, stats: FeatureStatistics) -> bool:
        """Keep `stats`; True once the quorum is met. Raises ProtocolError for a wrong width."""
        if stats.n_features != self.n_features:
            raise ProtocolError(
                f"statistics of {stats.n_features} features, the task has {self.n_features}"
            )
        self.by_node[stats.node] = stats
        return len(self.by_node) >= self.quorum

    def pooled(self) -> Normalization:
        return pool_statistics([self.by_node[node] for node in sorted(self.by_node)])
