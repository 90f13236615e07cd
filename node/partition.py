"""Splitting a training set across a simulated fleet: IID and label-skewed Dirichlet.

Both partitioners return one int64 index array per node, in draw order (not
sorted): together the arrays hold every index exactly once. Draw order is part
of the reference task, because a node's local shuffle permutes *positions* in
its array, so the same shuffle seed on a sorted array would visit other rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dirichlet_partition", "iid_partition"]

#: Redraws before dirichlet_partition gives up on min_samples (small alpha can
#: make the constraint rare, never impossible when the samples suffice).
_MAX_DRAWS = 10_000


def iid_partition(num_samples: int, num_nodes: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(num_samples)`` with ``RandomState(seed)`` and cut it into
    ``num_nodes`` nearly equal parts (sizes differ by at most one)."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    if num_samples < 0:
        raise ValueError(f"num_samples must not be negative, got {num_samples}")
    order = np.random.RandomState(seed).permutation(num_samples).astype(np.int64)
    return list(np.array_split(order, num_nodes))


def dirichlet_partition(
    labels: np.ndarray,
    num_nodes: int,
    alpha: float = 0.5,
    seed: int = 0,
    min_samples: int = 10,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared out in Dirichlet(alpha) proportions.

    One ``RandomState(seed)`` stream drives everything. For each class
    ``c = 0 .. max(labels)`` in order: take its indices (``np.where``), shuffle
    them, draw ``p ~ Dirichlet([alpha] * num_nodes)`` and cut at
    ``floor(cumsum(p) * n_c)``; the last cut is dropped so that rounding never
    loses the class's final sample. If any node ends with fewer than
    ``min_samples`` indices the whole draw is repeated on the same stream.
    Smaller ``alpha`` means stronger skew. Each node's array lists its class-0
    indices first (in shuffled order), then class 1, and so on.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if min_samples * num_nodes > labels.size:
        raise ValueError(
            f"{labels.size} samples cannot give {num_nodes} nodes {min_samples} samples each"
        )
    n_classes = int(labels.max()) + 1 if labels.size else 0
    rng = np.random.RandomState(seed)
    for _ in range(_MAX_DRAWS):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for c in range(n_classes):
            members = np.where(labels == c)[0].astype(np.int64)
            rng.shuffle(members)
            proportions = rng.dirichlet([alpha] * num_nodes)
            cuts = np.floor(np.cumsum(proportions) * len(members)).astype(np.int64)
            for node, part in enumerate(np.split(members, cuts[:-1])):
                shares[node].append(part)
        parts = [np.concatenate(s) if s else np.empty(0, np.int64) for s in shares]
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise ValueError(
        f"no Dirichlet({alpha}) draw in {_MAX_DRAWS} gave every node {min_samples} samples"
    )
