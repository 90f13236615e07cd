"""Splitting a training set across a simulated fleet: IID, label skew and quantity skew.

- ``iid_partition``: equal shares of a random permutation;
- ``dirichlet_partition``: each class shared out in Dirichlet proportions
  (label skew with every node seeing many classes);
- ``shard_partition``: McMahan et al.'s pathological split, a few label-sorted
  shards per node (label skew with each node seeing only a few classes);
- ``quantity_skew_partition``: IID content, node sizes in Dirichlet proportions.

Every partitioner returns one int64 index array per node, in draw order (not
sorted): together the arrays hold every index exactly once, and the same
arguments give the same arrays. Draw order is part of the reference task,
because a node's local shuffle permutes *positions* in its array, so the same
shuffle seed on a sorted array would visit other rows.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dirichlet_partition",
    "iid_partition",
    "quantity_skew_partition",
    "shard_partition",
]

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
    labels = _checked_labels(labels)
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


def shard_partition(
    labels: np.ndarray, num_nodes: int, shards_per_node: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. (2017): a few label-sorted shards per node.

    The indices are sorted by label and cut into ``num_nodes * shards_per_node``
    contiguous shards of nearly equal size (``np.array_split``: sizes differ by
    at most one); each node gets ``shards_per_node`` shards drawn at random
    without replacement, so it sees only a few classes. When every class's
    count is a multiple of the shard size, each shard holds one class and a
    node at most ``shards_per_node`` classes.

    One ``default_rng(seed)`` stream drives everything: first a permutation
    of all indices, then a stable sort by label (so which samples of a class
    share a shard is random, not the data set's storage order), then the
    permutation of shards handed out in consecutive groups. Each node's array
    lists its shards in the order drawn.
    """
    labels = _checked_labels(labels)
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    if shards_per_node < 1:
        raise ValueError(f"shards_per_node must be at least 1, got {shards_per_node}")
    num_shards = num_nodes * shards_per_node
    if num_shards > labels.size:
        raise ValueError(
            f"{labels.size} samples cannot be cut into {num_shards} non-empty shards "
            f"({num_nodes} nodes x {shards_per_node} shards each)"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(labels.size).astype(np.int64)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_nodes, shards_per_node)
    return [np.concatenate([shards[shard] for shard in hand]) for hand in dealt]


def quantity_skew_partition(
    num_samples: int,
    num_nodes: int,
    alpha: float = 1.0,
    min_samples: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """IID content, unequal sizes: node sizes follow Dirichlet(alpha) proportions.

    Each node first gets ``min_samples``; the remaining
    ``num_samples - num_nodes * min_samples`` samples are shared out in
    proportions ``p ~ Dirichlet([alpha] * num_nodes)``, cut at
    ``floor(cumsum(p) * remaining)`` with the last cut dropped so rounding
    never loses a sample. The minimum is therefore guaranteed without
    redrawing. Smaller ``alpha`` means more unequal sizes; a large one
    approaches equal shares. The samples themselves come from one random
    permutation, so every node's content is IID.

    One ``default_rng(seed)`` stream draws the permutation, then ``p``.
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    if num_samples < 0:
        raise ValueError(f"num_samples must not be negative, got {num_samples}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if min_samples < 0:
        raise ValueError(f"min_samples must not be negative, got {min_samples}")
    if min_samples * num_nodes > num_samples:
        raise ValueError(
            f"{num_samples} samples cannot give {num_nodes} nodes {min_samples} samples each"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_samples).astype(np.int64)
    remaining = num_samples - min_samples * num_nodes
    proportions = rng.dirichlet([alpha] * num_nodes)
    cuts = np.floor(np.cumsum(proportions) * remaining).astype(np.int64)
    extra = np.diff(np.concatenate([[0], cuts[:-1], [remaining]]))
    sizes = min_samples + extra
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def _checked_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an array, which must be 1-D, integer and non-negative."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    return labels
