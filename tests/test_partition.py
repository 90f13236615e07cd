"""Partitioners (IID, Dirichlet, shards, quantity skew): coverage, skew, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.node.partition import (
    dirichlet_partition,
    iid_partition,
    quantity_skew_partition,
    shard_partition,
)


def _assert_exact_cover(parts: list[np.ndarray], num_samples: int) -> None:
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    everything = np.concatenate(parts) if parts else np.empty(0, np.int64)
    np.testing.assert_array_equal(np.sort(everything), np.arange(num_samples))


@given(st.integers(0, 500), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_iid_covers_every_sample_once_with_sizes_within_one(
    num_samples: int, num_nodes: int, seed: int
) -> None:
    parts = iid_partition(num_samples, num_nodes, seed)
    assert len(parts) == num_nodes
    _assert_exact_cover(parts, num_samples)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_the_specified_permutation_split() -> None:
    parts = iid_partition(1437, 20, seed=0)
    expected = np.array_split(np.random.RandomState(0).permutation(1437), 20)
    for got, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [len(p) for p in parts[:3]] == [72, 72, 72] and len(parts[-1]) == 71


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 12),
    st.integers(1, 15),
    # alpha 0.1 over few classes can make min_samples unreachable (tested below).
    st.sampled_from([0.5, 1.0, 100.0]),
    st.integers(0, 2**31 - 1),
)
def test_dirichlet_covers_every_sample_once_and_honours_min_samples(
    n_classes: int, num_nodes: int, alpha: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, n_classes, 400)
    parts = dirichlet_partition(labels, num_nodes, alpha=alpha, seed=seed, min_samples=5)
    assert len(parts) == num_nodes
    _assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 5


def test_dirichlet_says_so_when_min_samples_cannot_be_met() -> None:
    labels = np.random.default_rng(0).integers(0, 2, 400)
    with pytest.raises(ValueError, match="gave every node 5 samples"):
        dirichlet_partition(labels, 12, alpha=0.1, seed=0, min_samples=5)


def test_dirichlet_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    a = dirichlet_partition(labels, 20, seed=3)
    b = dirichlet_partition(labels, 20, seed=3)
    c = dirichlet_partition(labels, 20, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_small_alpha_skews_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 10, alpha=0.05, seed=0, min_samples=1)
    # with alpha this small most nodes are dominated by one or two classes
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(top_share) > 0.5


def test_dirichlet_keeps_each_class_in_draw_order() -> None:
    labels = np.repeat(np.arange(3), 50)
    for part in dirichlet_partition(labels, 4, seed=1, min_samples=1):
        assert np.all(np.diff(labels[part]) >= 0)  # class 0 block, then 1, then 2


def test_dirichlet_rejects_impossible_min_samples_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(np.zeros(50, np.int64), 10, min_samples=6)
    with pytest.raises(ValueError, match="integer"):
        dirichlet_partition(np.zeros(50), 2)
    with pytest.raises(ValueError, match="negative"):
        dirichlet_partition(np.full(50, -1), 2, min_samples=1)


# --- shard_partition -------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 400),
    st.integers(1, 12),
    st.integers(1, 10),
    st.integers(1, 20),
    st.integers(0, 2**32 - 1),
)
def test_shards_cover_every_sample_once_with_sizes_from_equal_shards(
    num_samples: int, n_classes: int, num_nodes: int, shards_per_node: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, n_classes, num_samples)
    if num_nodes * shards_per_node > num_samples:
        with pytest.raises(ValueError, match="non-empty shards"):
            shard_partition(labels, num_nodes, shards_per_node, seed)
        return
    parts = shard_partition(labels, num_nodes, shards_per_node, seed)
    assert len(parts) == num_nodes
    _assert_exact_cover(parts, num_samples)
    # shards differ by at most one sample, so nodes differ by at most shards_per_node
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= shards_per_node


@pytest.mark.parametrize(
    ("num_nodes", "shards_per_node"),
    [(20, 1), (20, 2), (10, 3), (12, 5)],  # shards of 30, 15, 20 and 10 rows
)
def test_shards_give_each_node_at_most_shards_per_node_labels_when_classes_divide(
    num_nodes: int, shards_per_node: int
) -> None:
    # 10 classes of 60 rows, stored shuffled; each shard size divides 60
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 60))
    parts = shard_partition(labels, num_nodes, shards_per_node, seed=1)
    distinct = [len(np.unique(labels[p])) for p in parts]
    assert max(distinct) <= shards_per_node


def test_shards_are_dealt_at_random_and_are_label_sorted_within() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = shard_partition(labels, 50, 2, seed=0)
    pairs = {tuple(np.unique(labels[p])) for p in parts}
    assert len(pairs) > 10  # nodes hold different label pairs, not all the same two
    for part in parts:
        for shard in np.split(part, 2):  # 20 shards of 50 rows, 2 per node
            assert len(np.unique(labels[shard])) == 1


def test_shards_are_deterministic_for_a_seed_and_vary_across_seeds() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    a = shard_partition(labels, 20, seed=3)
    b = shard_partition(labels, 20, seed=3)
    c = shard_partition(labels, 20, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_shards_refuse_impossible_requests_and_bad_labels() -> None:
    labels = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="10 samples cannot be cut into 12"):
        shard_partition(labels, 6, 2)
    with pytest.raises(ValueError, match="num_nodes"):
        shard_partition(labels, 0)
    with pytest.raises(ValueError, match="shards_per_node"):
        shard_partition(labels, 2, shards_per_node=0)
    with pytest.raises(ValueError, match="integer"):
        shard_partition(np.zeros(10), 2)
    with pytest.raises(ValueError, match="negative"):
        shard_partition(np.full(10, -1), 2)


# --- quantity_skew_partition --------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 500),
    st.integers(1, 30),
    st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    st.integers(0, 5),
    st.integers(0, 2**32 - 1),
)
def test_quantity_skew_covers_every_sample_once_and_honours_min_samples(
    num_samples: int, num_nodes: int, alpha: float, min_samples: int, seed: int
) -> None:
    if min_samples * num_nodes > num_samples:
        with pytest.raises(ValueError, match="cannot give"):
            quantity_skew_partition(num_samples, num_nodes, alpha, min_samples, seed)
        return
    parts = quantity_skew_partition(num_samples, num_nodes, alpha, min_samples, seed)
    assert len(parts) == num_nodes
    _assert_exact_cover(parts, num_samples)
    assert min(len(p) for p in parts) >= min_samples


def _size_spread(alpha: float, seed: int) -> float:
    """Coefficient of variation of node sizes: 0 for equal shares."""
    sizes = [len(p) for p in quantity_skew_partition(2000, 20, alpha=alpha, seed=seed)]
    return float(np.std(sizes) / np.mean(sizes))


def test_quantity_skew_small_alpha_gives_unequal_sizes_and_large_alpha_near_equal() -> None:
    for seed in range(10):
        assert _size_spread(0.1, seed) > 1.0
        assert _size_spread(1000.0, seed) < 0.1


def test_quantity_skew_content_is_iid() -> None:
    # every node's rows are a uniform draw: sorted index blocks would betray a split
    parts = quantity_skew_partition(10_000, 4, alpha=5.0, min_samples=100, seed=0)
    for part in parts:
        assert abs(np.mean(part) / 10_000 - 0.5) < 0.05
        assert not np.all(np.diff(part) > 0)


def test_quantity_skew_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    a = quantity_skew_partition(1000, 10, alpha=0.5, seed=3)
    b = quantity_skew_partition(1000, 10, alpha=0.5, seed=3)
    c = quantity_skew_partition(1000, 10, alpha=0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [len(p) for p in a] != [len(p) for p in c]


def test_quantity_skew_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="100 samples cannot give 11 nodes 10 samples each"):
        quantity_skew_partition(100, 11, min_samples=10)
    with pytest.raises(ValueError, match="num_nodes"):
        quantity_skew_partition(100, 0)
    with pytest.raises(ValueError, match="alpha"):
        quantity_skew_partition(100, 2, alpha=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        quantity_skew_partition(-1, 2, min_samples=0)
    with pytest.raises(ValueError, match="min_samples"):
        quantity_skew_partition(100, 2, min_samples=-1)
