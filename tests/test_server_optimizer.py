"""Server optimizers (FedOpt): the step each applies, and their state across a checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.checkpoint import restore, snapshot
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.server_optimizer import OptimizerSettings, ServerOptimizer
from fedbus.broker.codec import encode
from fedbus.broker.errors import ConfigError
from fedbus.broker.messages import TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights

SHAPES = {"W": (3, 2), "b": (2,)}


def _core(kind: ServerOptimizer, lr: float = 0.1) -> AggregatorCore:
    config = dataclasses.replace(
        AggregationConfig.fedbuff(2, server_lr=lr, weight_by_samples=False),
        optimizer=OptimizerSettings(kind),
    )
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(
        TrainingTask("toy", "softmax", SHAPES), BufferedAggregator(config, initial)
    )


def _feed(core: AggregatorCore, rounds: int, seed: int = 0, first_seq: int = 0) -> None:
    rng = np.random.default_rng(seed)
    seq = first_seq
    for _ in range(rounds):
        for node in ("n1", "n2"):
            seq += 1
            delta = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
            message = UpdateMessage(node, seq, core.version, 5, encode_weights(delta))
            assert core.handle_update(node, encode(message)).ack.accepted


def test_fedavgm_with_one_step_equals_plain_sgd() -> None:
    sgd, momentum = _core(ServerOptimizer.SGD), _core(ServerOptimizer.FEDAVGM)
    _feed(sgd, 1)
    _feed(momentum, 1)
    for name in SHAPES:  # velocity starts at 0: the first step is the SGD step
        np.testing.assert_allclose(
            momentum.aggregator.weights[name], sgd.aggregator.weights[name], rtol=1e-6
        )


def test_fedadam_first_step_moves_every_coordinate_by_about_lr() -> None:
    core = _core(ServerOptimizer.FEDADAM, lr=0.01)
    _feed(core, 1)
    moved = np.concatenate([np.abs(w).ravel() for w in core.aggregator.weights.values()])
    # Adam's first bias-corrected step is lr * g / (|g| + eps): about lr wherever |g| >> eps.
    assert np.all(moved <= 0.01 * 1.0001) and np.median(moved) > 0.008


@pytest.mark.parametrize("kind", list(ServerOptimizer))
def test_optimizer_state_survives_a_checkpoint(kind: ServerOptimizer) -> None:
    live = _core(kind)
    _feed(live, 3)
    resumed = _core(kind)
    restore(resumed, snapshot(live, 1))
    _feed(live, 2, seed=9, first_seq=100)
    _feed(resumed, 2, seed=9, first_seq=100)
    for name in SHAPES:
        np.testing.assert_array_equal(
            resumed.aggregator.weights[name], live.aggregator.weights[name]
        )
    assert resumed.aggregator.optimizer_state.step == live.aggregator.optimizer_state.step


def test_bad_optimizer_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        OptimizerSettings(ServerOptimizer.FEDADAM, beta1=1.0)
    with pytest.raises(ConfigError):
        OptimizerSettings(ServerOptimizer.FEDYOGI, eps=0.0)
