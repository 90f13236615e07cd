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

__all__ = ["StatsPool", "pool_statistics"]


def pool_statistics(parts: list[FeatureStatistics]) -> Normalization:
    """The global per-feature statistics of the union of every part's rows.

    A feature no part had a value for gets count 0, mean 0, std 1, min = max = 0
    (so scaling by it is the identity, not a division by zero).
    """
    if not parts:
        raise ValueError("pool_statistics needs at least one node's statistics")
    count = np.array([p.count for p in parts], dtype=np.int64).sum(axis=0)
    total = np.sum([p.total for p in parts], axis=0, dtype=np.float64)
    total_sq = np.sum([p.total_sq for p in parts], axis=0, dtype=np.float64)
    seen = count > 0
    safe = np.where(seen, count, 1)
    mean = np.where(seen, total / safe, 0.0)
    variance = np.maximum(total_sq / safe - mean * mean, 0.0)  # cancellation can dip below 0
    std = np.where(seen, np.sqrt(variance), 1.0)
    with np.errstate(invalid="ignore"):
        lows = np.array([np.where(np.asarray(p.count) > 0, p.minimum, np.inf) for p in parts])
        highs = np.array([np.where(np.asarray(p.count) > 0, p.maximum, -np.inf) for p in parts])
    minimum = np.where(seen, lows.min(axis=0), 0.0)
    maximum = np.where(seen, highs.max(axis=0), 0.0)
    return Normalization(
        nodes=len(parts),
        count=tuple(int(c) for c in count),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        minimum=tuple(minimum.tolist()),
        maximum=tuple(maximum.tolist()),
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
