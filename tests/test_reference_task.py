"""digits-20 (BENCH-TASK.md): the data, the per-node randomness, and a FedAvg replay.

The replay is synchronous FedAvg in plain numpy with the real learner: every
round each of the 20 nodes starts from the global weights, trains one epoch
(batch 16, lr 0.1) shuffled by ``local_shuffle_rng(0, node, run)``, and the new
global model is the sample-weighted mean. It checks that the reference task
still learns as fast as BENCH-TASK.md says, with no broker involved.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np
import pytest

from fedbus.node.datasets import ReferenceTask, load_digits_task
from fedbus.node.learners import SoftmaxRegression
from fedbus.node.local_work import local_shuffle_rng, straggler_delay
from fedbus.node.partition import dirichlet_partition, iid_partition

TARGET_ACCURACY = 0.93
NUM_NODES = 20
ROUNDS = 30


@pytest.fixture(scope="module")
def task() -> ReferenceTask:
    return load_digits_task()


def test_task_shapes_dtypes_and_split(task: ReferenceTask) -> None:
    assert task.name == "digits-20"
    assert (task.n_features, task.n_classes) == (64, 10)
    assert task.X_train.shape == (1437, 64) and task.X_test.shape == (360, 64)
    assert task.y_train.shape == (1437,) and task.y_test.shape == (360,)
    for a in (task.X_train, task.X_test):
        assert a.dtype == np.float32 and a.flags.c_contiguous and not a.flags.writeable
    for a in (task.y_train, task.y_test):
        assert a.dtype == np.int64 and not a.flags.writeable
    assert set(np.unique(task.y_train)) == set(range(10))


def test_task_is_standardized_over_all_samples(task: ReferenceTask) -> None:
    X = np.concatenate([task.X_train, task.X_test]).astype(np.float64)
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-5)
    std = X.std(axis=0)
    constant = std < 1e-6  # pixels that are 0 in every image stay 0 (std 0 -> 1)
    assert constant.sum() >= 1 and not X[:, constant].any()
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-5)


def test_task_follows_the_specified_permutation(task: ReferenceTask) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    order = np.random.RandomState(0).permutation(1797)
    np.testing.assert_array_equal(task.y_train, target[order[:1437]])
    np.testing.assert_array_equal(task.y_test, target[order[1437:]])
    assert load_digits_task() is task  # cached: one shared read-only copy


def test_local_randomness_uses_the_specified_streams() -> None:
    got = local_shuffle_rng(0, 3, 7).permutation(50)
    np.testing.assert_array_equal(got, np.random.default_rng([0, 3, 7, 0]).permutation(50))
    expected = 0.05 * np.random.default_rng([0, 3, 7, 1]).lognormal(mean=-0.5, sigma=1)
    assert straggler_delay(0, 3, 7) == expected
    assert straggler_delay(0, 3, 7, scale=1.0) == pytest.approx(expected / 0.05)
    delays = [straggler_delay(0, node, run) for node in range(20) for run in range(100)]
    assert 0.04 < np.mean(delays) < 0.06 and min(delays) > 0


def _fedavg_accuracies(
    task: ReferenceTask, parts: list[np.ndarray], first_run_index: int
) -> list[float]:
    """Test accuracy of the global model after each of ROUNDS synchronous rounds."""
    node_data = [(task.X_train[idx], task.y_train[idx]) for idx in parts]
    counts = np.array([len(idx) for idx in parts], dtype=np.float64)
    global_model = SoftmaxRegression(task.n_features, task.n_classes)
    local = SoftmaxRegression(task.n_features, task.n_classes)
    accuracies = []
    for round_index in range(ROUNDS):
        start = global_model.get_weights()
        totals = {name: np.zeros(w.shape, np.float64) for name, w in start.items()}
        for node, (X, y) in enumerate(node_data):
            local.set_weights(start)
            rng = local_shuffle_rng(0, node, first_run_index + round_index)
            local.fit(X, y, epochs=1, batch_size=16, lr=0.1, rng=rng)
            for name, w in local.get_weights().items():
                totals[name] += counts[node] * w
        global_model.set_weights(
            {name: (t / counts.sum()).astype(np.float32) for name, t in totals.items()}
        )
        accuracies.append(global_model.evaluate(task.X_test, task.y_test)["accuracy"])
    return accuracies


def _rounds_to_target(accuracies: list[float]) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a >= TARGET_ACCURACY), None)


def _partition(task: ReferenceTask, kind: str) -> list[np.ndarray]:
    if kind == "iid":
        return iid_partition(len(task.y_train), NUM_NODES, seed=0)
    return dirichlet_partition(task.y_train, NUM_NODES, alpha=0.5, seed=0, min_samples=10)


# Exact figures of this implementation, (rounds to 0.93, accuracy after 30 rounds),
# keyed by partition and the index of a node's first local run. BENCH-TASK's
# "k-th local run" counts from 1 (as EdgeNode does); that reproduces every
# number it quotes (9 and 10 rounds; 0.953 and 0.947 after 30), while counting
# from 0 would give 11 rounds for Dirichlet. A change here means the reference
# task itself changed.
PINNED = {
    ("iid", 1): (9, 343 / 360),
    ("dirichlet", 1): (10, 341 / 360),
}


@pytest.mark.parametrize(("kind", "first_run_index"), PINNED.keys())
def test_fedavg_reaches_target_in_about_ten_rounds(
    task: ReferenceTask, kind: str, first_run_index: int
) -> None:
    accuracies = _fedavg_accuracies(task, _partition(task, kind), first_run_index)
    rounds = _rounds_to_target(accuracies)
    assert rounds is not None and 8 <= rounds <= 12, (rounds, accuracies)
    assert accuracies[-1] > 0.94, accuracies
    assert (rounds, accuracies[-1]) == pytest.approx(PINNED[kind, first_run_index])
