"""Federated normalization on the aggregator: pooling, the stats channel, durability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.checkpoint import restore, snapshot
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.normalization import StatsPool, pool_statistics
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.codec import decode, encode
from fedbus.broker.errors import ProtocolError
from fedbus.broker.messages import FeatureStatistics, ModelMessage, TrainingTask

SHAPES = {"W": (3, 1), "b": (1,)}
FEATURES = ("temp", "humidity", "vibration")
STEPS = ({"step": "impute", "strategy": "median"}, {"step": "standardize"})


def statistics_of(node: str, rows: np.ndarray) -> FeatureStatistics:
    """A node's statistics, straight from numpy (NaN = missing)."""
    present = ~np.isnan(rows)
    count = present.sum(axis=0)
    filled = np.where(present, rows, 0.0)
    low = np.where(present, rows, np.inf).min(axis=0, initial=np.inf)
    high = np.where(present, rows, -np.inf).max(axis=0, initial=-np.inf)
    return FeatureStatistics(
        node,
        tuple(int(c) for c in count),
        tuple(filled.sum(axis=0).tolist()),
        tuple((filled**2).sum(axis=0).tolist()),
        tuple(np.where(count > 0, low, 0.0).tolist()),
        tuple(np.where(count > 0, high, 0.0).tolist()),
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    offset=st.sampled_from([0.0, 20.0, 1e4]),
)
def test_pooled_statistics_equal_those_of_the_pooled_rows(
    seed: int, sizes: list[int], offset: float
) -> None:
    rng = np.random.default_rng(seed)
    parts = []
    for size in sizes:  # every node its own scale and shift: non-IID on purpose
        rows = rng.normal(offset + rng.normal(0, 3), rng.uniform(0.1, 5), (size, 3))
        rows[rng.random(rows.shape) < 0.1] = np.nan
        parts.append(rows)
    pooled_rows = np.concatenate(parts)
    normalization = pool_statistics([statistics_of(f"n{i}", p) for i, p in enumerate(parts)])
    present = ~np.isnan(pooled_rows)
    assert normalization.count == tuple(int(c) for c in present.sum(axis=0))
    assert normalization.nodes == len(parts)
    for j in range(3):
        column = pooled_rows[present[:, j], j]
        if column.size == 0:  # nobody had a value: scaling must be the identity
            assert (normalization.mean[j], normalization.std[j]) == (0.0, 1.0)
            continue
        scale = max(1.0, abs(offset))
        assert normalization.mean[j] == pytest.approx(column.mean(), rel=1e-12, abs=1e-12 * scale)
        # sum_sq / n - mean**2 cancels when |mean| >> std: its float64 error is
        # about 1e-14 * mean**2 in the variance, so 1e-13 * mean**2 / std in the std
        assert normalization.std[j] == pytest.approx(
            column.std(), rel=1e-9, abs=1e-13 * scale**2 / max(column.std(), 1e-300)
        )
        assert normalization.minimum[j] == column.min()
        assert normalization.maximum[j] == column.max()


def test_a_node_that_sends_again_replaces_its_statistics() -> None:
    pool = StatsPool(3, quorum=2)
    rows = np.arange(12.0).reshape(4, 3)
    assert not pool.add(statistics_of("n1", rows))
    assert not pool.add(statistics_of("n1", rows * 2))  # a resend, not a second node
    assert pool.add(statistics_of("n2", rows))
    expected = pool_statistics([statistics_of("n1", rows * 2), statistics_of("n2", rows)])
    assert pool.pooled() == expected
    with pytest.raises(ProtocolError, match="2 features"):
        pool.add(statistics_of("n3", rows[:, :2]))


def test_statistics_survive_the_wire_and_refuse_nonsense() -> None:
    stats = statistics_of("n1", np.array([[1.0, np.nan, 3.0], [2.0, np.nan, 5.0]]))
    assert decode(encode(stats), FeatureStatistics) == stats
    for bad in (
        {"count": (-1, 0, 0)},
        {"total": (float("nan"), 0.0, 0.0)},
        {"total_sq": (-1.0, 0.0, 0.0)},
        {"minimum": (9.0, 0.0, 0.0)},  # above its maximum
        {"maximum": (1.0, 2.0)},  # one feature short
    ):
        fields = {**stats.__dict__, **bad}
        with pytest.raises(ProtocolError):
            FeatureStatistics(**fields)


def _core(quorum: int = 2, known: frozenset[str] | None = None) -> AggregatorCore:
    task = TrainingTask("sensors", "linear", SHAPES, features=FEATURES, preprocess=STEPS)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(
        task,
        BufferedAggregator(AggregationConfig.fedbuff(2), initial),
        known_nodes=known,
        stats_quorum=quorum,
    )


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(10, 2, (25, 3))


def test_the_quorum_completes_the_task_with_the_pooled_normalization() -> None:
    core = _core(quorum=2)
    assert core.task.needs_normalization
    first = core.handle_stats("n1", encode(statistics_of("n1", _rows(1))))
    assert first.pooled and not first.complete and core.task.normalization is None
    second = core.handle_stats("n2", encode(statistics_of("n2", _rows(2))))
    assert second.pooled and second.complete
    assert core.task.normalization == pool_statistics(
        [statistics_of("n1", _rows(1)), statistics_of("n2", _rows(2))]
    )
    assert not core.task.needs_normalization
    # The model message now carries it to every node.
    sent = decode(encode(core.model_message()), ModelMessage)
    assert sent.task.normalization == core.task.normalization
    # Frozen from here on: later statistics change nothing.
    late = core.handle_stats("n3", encode(statistics_of("n3", _rows(3) * 100)))
    assert not late.pooled and core.counters.stats_ignored == 1
    assert core.task.normalization.nodes == 2


@pytest.mark.parametrize(
    ("topic_node", "payload", "why"),
    [
        ("n1", b"\xc1", "not msgpack"),
        ("n2", encode(statistics_of("n1", _rows(1))), "another node's topic"),
        ("n1", encode(statistics_of("n1", _rows(1)[:, :2])), "wrong width"),
        ("intruder", encode(statistics_of("intruder", _rows(1))), "not enrolled"),
    ],
)
def test_bad_statistics_are_counted_and_change_nothing(
    topic_node: str, payload: bytes, why: str
) -> None:
    core = _core(quorum=1, known=frozenset({"n1", "n2"}))
    outcome = core.handle_stats(topic_node, payload)
    assert not outcome.pooled and not outcome.complete, why
    assert core.counters.stats_rejected == 1 and core.task.normalization is None
    assert core.stats_pool.by_node == {}


def test_a_task_without_scaling_ignores_statistics() -> None:
    task = TrainingTask("plain", "linear", SHAPES)
    core = AggregatorCore(
        task,
        BufferedAggregator(
            AggregationConfig.fedbuff(2),
            {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()},
        ),
    )
    assert not core.handle_stats("n1", encode(statistics_of("n1", _rows(1)))).pooled
    assert core.counters.stats_ignored == 1 and core.task.normalization is None


def test_a_checkpoint_hands_the_pooled_normalization_to_a_fresh_core() -> None:
    core = _core(quorum=1)
    core.handle_stats("n1", encode(statistics_of("n1", _rows(1))))
    fresh = _core(quorum=1)
    restore(fresh, snapshot(core, 1))
    assert fresh.task == core.task and fresh.task.normalization is not None
    assert fresh.counters.stats_accepted == 1


def test_journaled_statistics_pool_the_same_normalization_after_a_crash(tmp_path: Path) -> None:
    core = _core(quorum=2)
    store = AggregatorStore(tmp_path)
    store.recover(core)
    for node, seed in (("n1", 1), ("n2", 2)):
        payload = encode(statistics_of(node, _rows(seed)))
        assert core.handle_stats(node, payload).pooled
        store.log_stats(node, payload)
    store.commit()  # then a crash: no checkpoint was written after the pooling
    recovered = _core(quorum=2)
    AggregatorStore(tmp_path).recover(recovered)
    assert recovered.task.normalization is not None
    assert recovered.task.normalization == core.task.normalization
