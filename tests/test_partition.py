"""IID and Dirichlet partitioners: coverage, balance, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.node.partition import dirichlet_partition, iid_partition


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
