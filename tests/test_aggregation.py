"""The aggregation step and staleness weights against hand-computed values (no broker)."""

from __future__ import annotations

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator, update_coefficient
from fedbus.aggregator.server_optimizer import apply_buffer
from fedbus.aggregator.staleness import StalenessKind, StalenessWeighting
from fedbus.broker.errors import ConfigError


def test_constant_weight_is_one_for_any_staleness() -> None:
    weighting = StalenessWeighting(StalenessKind.CONSTANT)
    assert [weighting.weight(s) for s in (0, 1, 7, 1000)] == [1.0, 1.0, 1.0, 1.0]


def test_polynomial_weight_matches_formula() -> None:
    weighting = StalenessWeighting(StalenessKind.POLYNOMIAL, a=0.5)
    assert weighting.weight(0) == 1.0
    assert weighting.weight(3) == pytest.approx(0.5)  # (1 + 3) ** -0.5
    assert weighting.weight(8) == pytest.approx(1 / 3)  # (1 + 8) ** -0.5


def test_hinge_weight_is_flat_then_decays() -> None:
    weighting = StalenessWeighting(StalenessKind.HINGE, a=2.0, b=3)
    assert [weighting.weight(s) for s in (0, 3)] == [1.0, 1.0]
    assert weighting.weight(4) == pytest.approx(1 / 3)  # 1 / (2 * (4 - 3) + 1)
    assert weighting.weight(6) == pytest.approx(1 / 7)


def test_negative_staleness_is_an_error() -> None:
    with pytest.raises(ValueError):
        StalenessWeighting().weight(-1)


def test_coefficient_combines_staleness_and_samples() -> None:
    config = AggregationConfig.fedbuff(
        buffer_size=2, staleness=StalenessWeighting(StalenessKind.POLYNOMIAL, a=1.0)
    )
    assert update_coefficient(config, staleness=1, num_samples=40) == (20.0, 40.0)
    uniform = AggregationConfig.fedbuff(buffer_size=2, weight_by_samples=False)
    assert update_coefficient(uniform, staleness=0, num_samples=40) == (1.0, 1.0)


def test_apply_buffer_hand_computed() -> None:
    weights = {"w": np.array([1.0, 2.0], np.float32)}
    buffer = {"w": np.array([4.0, -8.0], np.float32)}
    stepped = apply_buffer(weights, buffer, normalizer=2.0, server_lr=0.5)
    np.testing.assert_array_equal(stepped["w"], np.array([2.0, 0.0], np.float32))
    assert stepped["w"].dtype == np.float32
    np.testing.assert_array_equal(weights["w"], [1.0, 2.0])  # inputs untouched


def _aggregator(config: AggregationConfig) -> BufferedAggregator:
    return BufferedAggregator(config, {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)})


def test_fedbuff_steps_after_k_updates_with_staleness_discount() -> None:
    config = AggregationConfig.fedbuff(
        buffer_size=2,
        server_lr=1.0,
        staleness=StalenessWeighting(StalenessKind.POLYNOMIAL, a=1.0),
    )
    agg = _aggregator(config)
    agg.version = 1
    fresh = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([2.0], np.float32)}
    stale = {"w": np.array([3.0, -3.0], np.float32), "b": np.array([0.0], np.float32)}
    assert agg.add("a", fresh, base_version=1, num_samples=10) is False
    assert agg.version == 1 and not agg.weights["w"].any()
    assert agg.add("b", stale, base_version=0, num_samples=30) is True
    # a = f(s) * n: fresh 1 * 10, stale (1+1)^-1 * 30 = 15; normaliser 10 + 30 = 40
    # w = (10 * [1, 1] + 15 * [3, -3]) / 40 = [55, -35] / 40; b = 20 / 40
    np.testing.assert_allclose(agg.weights["w"], [55 / 40, -35 / 40], rtol=1e-6)
    np.testing.assert_allclose(agg.weights["b"], [0.5], rtol=1e-6)
    assert agg.version == 2 and agg.buffered == 0 and agg.applied_updates == 2
    assert not agg.buffer["w"].any()


def test_fedasync_is_alpha_times_staleness_weight_times_delta() -> None:
    config = AggregationConfig.fedasync(
        alpha=0.5, staleness=StalenessWeighting(StalenessKind.POLYNOMIAL, a=0.5)
    )
    agg = _aggregator(config)
    agg.version = 3
    delta = {"w": np.array([2.0, 4.0], np.float32), "b": np.array([8.0], np.float32)}
    assert agg.add("a", delta, base_version=0, num_samples=7) is True
    # staleness 3: f = 4 ** -0.5 = 0.5; step = alpha * f * delta = 0.25 * delta
    np.testing.assert_allclose(agg.weights["w"], [0.5, 1.0])
    np.testing.assert_allclose(agg.weights["b"], [2.0])
    assert agg.version == 4


def test_sync_fedavg_is_the_sample_weighted_mean_of_local_models() -> None:
    agg = _aggregator(AggregationConfig.sync(cohort_size=3))
    agg.weights = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([0.0], np.float32)}
    local_models = [([2.0, 0.0], 1), ([0.0, 4.0], 1), ([1.0, 1.0], 2)]
    stepped = []
    for i, (local, n) in enumerate(local_models):
        delta = {"w": np.array(local, np.float32) - 1.0, "b": np.zeros(1, np.float32)}
        stepped.append(agg.add(f"n{i}", delta, base_version=0, num_samples=n))
    assert stepped == [False, False, True]
    # (1 * [2, 0] + 1 * [0, 4] + 2 * [1, 1]) / 4 = [1, 1.5]
    np.testing.assert_allclose(agg.weights["w"], [1.0, 1.5])


def test_flush_applies_a_partial_buffer_and_ignores_an_empty_one() -> None:
    agg = _aggregator(AggregationConfig.fedbuff(buffer_size=5))
    assert agg.flush() is False and agg.version == 0
    agg.add("a", {"w": np.array([1.0, 2.0], np.float32), "b": np.ones(1, np.float32)}, 0, 4)
    assert agg.flush() is True
    np.testing.assert_allclose(agg.weights["w"], [1.0, 2.0])
    assert agg.version == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: AggregationConfig.fedbuff(buffer_size=0),
        lambda: AggregationConfig.fedbuff(server_lr=0.0),
        lambda: AggregationConfig(max_staleness=-1),
        lambda: AggregationConfig(mode=AggregationConfig.sync(2).mode, buffer_size=2),
        lambda: StalenessWeighting(a=-1.0),
    ],
)
def test_invalid_configs_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        make()
