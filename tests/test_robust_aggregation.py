"""Robust and DP modes of the buffer: clipping, one row per node, median, trimmed mean, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.checkpoint import restore, snapshot
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.privacy import gaussian_epsilon
from fedbus.aggregator.robust import PrivacySettings, RobustSettings, Rule
from fedbus.aggregator.staleness import StalenessKind, StalenessWeighting
from fedbus.broker.errors import ConfigError
from fedbus.broker.messages import TrainingTask
from fedbus.broker.tensors import encode_weights
from fedbus.kernels.norms import clip_within, l2_norm

SHAPES = {"W": (4, 3), "b": (3,)}
SIZE = 15


def _aggregator(k: int = 100, **kw) -> BufferedAggregator:  # type: ignore[no-untyped-def]
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    config = AggregationConfig.fedbuff(
        k, staleness=StalenessWeighting(StalenessKind.CONSTANT), weight_by_samples=False, **kw
    )
    return BufferedAggregator(config, initial)


def _delta(flat: np.ndarray) -> dict[str, np.ndarray]:
    return {"W": flat[:12].reshape(4, 3).astype(np.float32), "b": flat[12:].astype(np.float32)}


def _step(agg: BufferedAggregator) -> np.ndarray:
    before = np.concatenate([w.reshape(-1) for w in agg.weights.values()])
    agg.flush()
    return np.concatenate([w.reshape(-1) for w in agg.weights.values()]) - before


def test_clip_within_never_ends_above_the_bound() -> None:
    rng = np.random.default_rng(1)
    for _ in range(2000):
        values = (rng.standard_normal(rng.integers(1, 50)) * 10.0 ** rng.uniform(-3, 30)).astype(
            np.float32
        )
        bound = float(10.0 ** rng.uniform(-3, 3))
        clip_within(values, bound)
        assert l2_norm(values) <= bound


def test_median_rule_ignores_a_minority_of_huge_rows() -> None:
    agg = _aggregator(robust=RobustSettings(rule=Rule.MEDIAN))
    rng = np.random.default_rng(0)
    honest = [rng.normal(1.0, 0.1, SIZE) for _ in range(7)]
    for i, row in enumerate(honest):
        agg.add(f"h{i}", _delta(row), 0, 1)
    for i in range(3):
        agg.add(f"evil{i}", _delta(np.full(SIZE, 1e6)), 0, 1)
    rows = np.stack([*honest, *[np.full(SIZE, 1e6)] * 3]).astype(np.float32)
    np.testing.assert_array_equal(_step(agg), np.median(rows, axis=0).astype(np.float32))


def test_trimmed_mean_rule_matches_sorted_slice_mean() -> None:
    agg = _aggregator(robust=RobustSettings(rule=Rule.TRIMMED, trim_beta=0.2))
    rng = np.random.default_rng(3)
    rows = rng.normal(0.0, 1.0, (10, SIZE)).astype(np.float32)
    for i, row in enumerate(rows):
        agg.add(f"n{i:02d}", _delta(row), 0, 1)
    expected = np.sort(rows.astype(np.float64), axis=0)[2:8].mean(axis=0)
    np.testing.assert_allclose(_step(agg), expected, rtol=1e-6, atol=1e-7)


def test_a_nodes_updates_in_one_step_merge_into_one_clipped_row() -> None:
    agg = _aggregator(robust=RobustSettings(rule=Rule.MEDIAN, clip_norm=1.0))
    for _ in range(5):
        agg.add("fast", _delta(np.ones(SIZE)), 0, 1)
    agg.add("slow", _delta(np.zeros(SIZE)), 0, 1)
    assert agg.rows is not None and sorted(agg.rows.rows) == ["fast", "slow"]
    assert l2_norm(agg.rows.rows["fast"]) <= 1.0
    assert agg.buffered == 6


def test_adaptive_clip_follows_the_median_of_recent_norms() -> None:
    agg = _aggregator(robust=RobustSettings(adaptive_clip=2.0, clip_window=10))
    assert agg.rows is not None
    for i in range(5):
        agg.add(f"n{i}", _delta(np.full(SIZE, 1.0 / math.sqrt(SIZE))), 0, 1)  # norm 1
    assert agg.rows.clip_bound() == pytest.approx(2.0)
    agg.add("big", _delta(np.full(SIZE, 100.0)), 0, 1)
    assert l2_norm(agg.rows.rows["big"]) <= 2.0


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    scales=st.lists(st.floats(1e-6, 1e30), min_size=30, max_size=30),
    seed=st.integers(0, 2**32 - 1),
    clip=st.floats(1e-3, 1e3),
)
def test_dp_every_row_is_within_the_clip_bound_and_the_noise_is_reproducible(
    nodes: list[int], scales: list[float], seed: int, clip: float
) -> None:
    """The DP guarantee rests on this: no row above `clip`, however large or repeated."""
    privacy = PrivacySettings(clip=clip, noise_multiplier=0.5)
    agg = _aggregator(privacy=privacy)
    agg.noise_seed = 7
    rng = np.random.default_rng(seed)
    for node, scale in zip(nodes, scales, strict=False):
        agg.add(f"n{node}", _delta(rng.standard_normal(SIZE) * scale), 0, 1)
        assert agg.rows is not None
        for row in agg.rows.rows.values():
            assert l2_norm(row) <= clip, "an unclipped row got into the DP buffer"
    assert agg.rows is not None
    rows = agg.rows.stacked().astype(np.float64)
    noise = np.random.default_rng([7, 0]).normal(0.0, 0.5 * clip, SIZE)
    expected = ((rows.sum(axis=0) + noise) / len(rows)).astype(np.float32)
    np.testing.assert_array_equal(_step(agg), expected)


def test_dp_accountant_reports_the_exact_gaussian_epsilon_of_the_steps() -> None:
    agg = _aggregator(k=1, privacy=PrivacySettings(clip=1.0, noise_multiplier=1.1, delta=1e-5))
    for _ in range(20):
        agg.add("n", _delta(np.ones(SIZE)), agg.version, 1)
    spent = agg.privacy_spent()
    assert spent is not None and spent.steps == 20
    assert spent.epsilon == pytest.approx(gaussian_epsilon(1e-5, math.sqrt(20) / 1.1), rel=1e-12)
    # Fixed setting, value from an independent numerical integration (tests/test_privacy.py).
    agg.version = 1000
    assert agg.privacy_spent().epsilon == pytest.approx(534.8979801635206, rel=1e-9)  # type: ignore[union-attr]


def test_dp_needs_the_mean_rule() -> None:
    with pytest.raises(ConfigError, match="mean rule"):
        _aggregator(robust=RobustSettings(rule=Rule.MEDIAN), privacy=PrivacySettings(1.0, 1.0))


def test_row_buffer_survives_a_checkpoint() -> None:
    config = AggregationConfig.fedbuff(
        10, robust=RobustSettings(rule=Rule.TRIMMED, trim_beta=0.1, adaptive_clip=3.0)
    )
    task = TrainingTask("toy", "softmax", SHAPES)

    def core() -> AggregatorCore:
        initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
        return AggregatorCore(task, BufferedAggregator(config, initial))

    live = core()
    rng = np.random.default_rng(5)
    for i in range(4):
        live.aggregator.add(f"n{i}", _delta(rng.standard_normal(SIZE)), 0, 3)
    restored = core()
    restore(restored, snapshot(live, 1))
    assert restored.aggregator.rows is not None and live.aggregator.rows is not None
    assert list(restored.aggregator.rows.recent_norms) == list(live.aggregator.rows.recent_norms)
    for i in range(4, 10):
        delta = _delta(rng.standard_normal(SIZE))
        live.aggregator.add(f"n{i}", delta, 0, 3)
        restored.aggregator.add(f"n{i}", {k: v.copy() for k, v in delta.items()}, 0, 3)
    for name in SHAPES:
        np.testing.assert_array_equal(
            live.aggregator.weights[name], restored.aggregator.weights[name]
        )
    assert live.version == restored.version == 1


def test_wire_tensors_decode_straight_into_rows() -> None:
    agg = _aggregator(robust=RobustSettings(clip_norm=1e9))
    flat = np.arange(SIZE, dtype=np.float32)
    tensors = {t.name: t for t in encode_weights(_delta(flat))}
    agg.add("n", tensors, 0, 1)
    assert agg.rows is not None
    np.testing.assert_array_equal(agg.rows.rows["n"], flat)


def test_aggregator_flags_build_robust_and_dp_settings_and_a_private_seed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import argparse
    import stat

    from fedbus.aggregator.cli import aggregation_config, configure_parser
    from fedbus.aggregator.robust_cli import noise_seed

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    config = aggregation_config(
        parser.parse_args(["--dp-clip", "1", "--dp-noise-multiplier", "1.5"])
    )
    assert config.privacy == PrivacySettings(1.0, 1.5, 1e-5)
    robust = aggregation_config(
        parser.parse_args(["--robust", "trimmed", "--trim-beta", "0.2", "--adaptive-clip", "0.5"])
    ).robust
    assert robust == RobustSettings(rule=Rule.TRIMMED, trim_beta=0.2, adaptive_clip=0.5)
    with pytest.raises(ConfigError, match="go together"):
        aggregation_config(parser.parse_args(["--dp-clip", "1"]))
    with pytest.raises(ConfigError, match="mean rule"):
        aggregation_config(
            parser.parse_args(
                ["--robust", "median", "--dp-clip", "1", "--dp-noise-multiplier", "1"]
            )
        )
    seed = noise_seed(tmp_path)
    assert noise_seed(tmp_path) == seed  # made once, then reused across restarts
    assert stat.S_IMODE((tmp_path / "dp-noise.seed").stat().st_mode) == 0o600
