"""Local DP on the node: every delta leaves the device clipped and noised."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbus.aggregator.privacy import gaussian_epsilon
from fedbus.aggregator.robust import PrivacySettings
from fedbus.kernels.norms import l2_norm
from fedbus.node.local_privacy import LocalPrivacy, privatize


def test_privatize_clips_then_adds_noise_of_the_stated_std() -> None:
    settings = PrivacySettings(clip=1.0, noise_multiplier=0.5)
    delta = {"W": np.full((300, 100), 10.0, np.float32), "b": np.full(100, -10.0, np.float32)}
    noisy = privatize(delta, settings, np.random.default_rng(0))
    assert {k: v.shape for k, v in noisy.items()} == {"W": (300, 100), "b": (100,)}
    assert all(v.dtype == np.float32 for v in noisy.values())
    # Without noise the same call leaves the clipped delta: its norm is the bound.
    clipped = privatize(delta, PrivacySettings(1.0, 1e-300), np.random.default_rng(0))
    flat = np.concatenate([v.reshape(-1) for v in clipped.values()])
    assert 0.999 < l2_norm(np.ascontiguousarray(flat)) <= 1.0
    noise = np.concatenate([(noisy[k] - clipped[k]).reshape(-1) for k in delta])
    assert noise.std() == pytest.approx(0.5, rel=0.02)
    assert abs(noise.mean()) < 0.01


def test_the_node_accounts_for_every_update() -> None:
    privacy = LocalPrivacy(PrivacySettings(clip=2.0, noise_multiplier=3.0, delta=1e-6))
    for _ in range(10):
        privacy.apply({"w": np.ones(5, np.float32)})
    spent = privacy.spent()
    assert spent.steps == 10
    assert spent.epsilon == pytest.approx(gaussian_epsilon(1e-6, math.sqrt(10) / 3.0))


def test_noise_differs_between_nodes_and_runs() -> None:
    settings = PrivacySettings(clip=1.0, noise_multiplier=1.0)
    a = LocalPrivacy(settings).apply({"w": np.zeros(50, np.float32)})
    b = LocalPrivacy(settings).apply({"w": np.zeros(50, np.float32)})
    assert not np.array_equal(a["w"], b["w"])
