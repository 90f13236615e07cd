"""20% Byzantine nodes on the reference task: the attacks work on the mean, robust mode holds.

The fleet runs in virtual time (fedbus.node.virtual_fleet): real learners,
real codec, the real AggregatorCore, exact and quick. Reference task
digits-20 with the Dirichlet(0.5) split, FedBuff K = 10, 800 updates; four of
the twenty nodes attack on every run. The robust setting is the one the docs
recommend: trimmed mean (beta 0.2) over one row per node, each update
clipped to half the median norm of the last 50 (adaptive clip x0.5).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig
from fedbus.aggregator.robust import RobustSettings, Rule
from fedbus.node.attacks import Attack, malicious_nodes
from fedbus.node.datasets import load_digits_task
from fedbus.node.partition import dirichlet_partition
from fedbus.node.virtual_fleet import VirtualRun, digits_task, simulate

UPDATES = 800
ROBUST = RobustSettings(rule=Rule.TRIMMED, trim_beta=0.2, adaptive_clip=0.5)


@pytest.fixture(scope="module")
def runner():  # type: ignore[no-untyped-def]
    data = load_digits_task()
    split = dirichlet_partition(data.y_train, 20, 0.5, seed=0)
    parts = [(np.ascontiguousarray(data.X_train[i]), data.y_train[i]) for i in split]
    bad = malicious_nodes(20, 0.2, seed=0)
    assert len(bad) == 4

    def run(robust: RobustSettings, attack: Attack | None) -> VirtualRun:
        attackers = {i: attack for i in bad} if attack is not None else None
        return simulate(
            digits_task(),
            parts,
            (data.X_test, data.y_test),
            AggregationConfig.fedbuff(10, robust=robust),
            attackers=attackers,
            max_updates=UPDATES,
        )

    return run


@pytest.fixture(scope="module")
def clean(runner) -> VirtualRun:  # type: ignore[no-untyped-def]
    result = runner(RobustSettings(), None)
    assert result.final_accuracy >= 0.93  # the reference task's target, without attackers
    return result


@pytest.mark.parametrize("attack", [Attack.SIGN_FLIP, Attack.NOISE])
def test_sign_flip_and_noise_wreck_the_plain_mean(runner, clean, attack: Attack) -> None:  # type: ignore[no-untyped-def]
    attacked = runner(RobustSettings(), attack)
    assert attacked.final_accuracy < clean.final_accuracy - 0.10


def test_boosted_updates_hurt_the_plain_mean(runner, clean) -> None:  # type: ignore[no-untyped-def]
    """x100 of an honest delta: argmax barely cares about scale, the loss does."""
    attacked = runner(RobustSettings(), Attack.SCALE)
    assert attacked.final_accuracy < clean.final_accuracy
    assert attacked.final_loss > 1.5 * clean.final_loss


@pytest.mark.parametrize("attack", list(Attack))
def test_robust_mode_ends_within_three_points_of_clean(runner, clean, attack: Attack) -> None:  # type: ignore[no-untyped-def]
    defended = runner(ROBUST, attack)
    assert defended.final_accuracy >= clean.final_accuracy - 0.03


def test_robust_mode_costs_little_without_attackers(runner, clean) -> None:  # type: ignore[no-untyped-def]
    assert runner(ROBUST, None).final_accuracy >= clean.final_accuracy - 0.02


def test_virtual_runs_are_exactly_reproducible(runner) -> None:  # type: ignore[no-untyped-def]
    first = runner(ROBUST, Attack.NOISE)
    second = runner(ROBUST, Attack.NOISE)
    assert first.scores == second.scores
