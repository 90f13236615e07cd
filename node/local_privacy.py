"""Local differential privacy: a node clips and noises its own delta before sending.

For fleets that do not trust the aggregator with raw deltas: each update is
clipped to L2 norm `clip` (all tensors together) and Gaussian noise of
standard deviation `noise_multiplier * clip` is added to every weight, so
the update is a Gaussian mechanism on the node's data before it leaves the
device. The node's accountant (fedbus.aggregator.privacy) composes its own
updates; the noise comes from the operating system's randomness, never from
a seed anyone else knows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedbus.aggregator.privacy import GaussianAccountant, PrivacySpent
from fedbus.aggregator.robust import PrivacySettings
from fedbus.kernels.norms import clip_within


def privatize(
    delta: Mapping[str, np.ndarray], settings: PrivacySettings, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The clipped, noised copy of `delta` (float32, same names and shapes)."""
    names = list(delta)
    flat = np.concatenate([np.asarray(delta[n], np.float32).reshape(-1) for n in names])
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    clip_within(flat, settings.clip)
    noisy = flat.astype(np.float64) + rng.normal(0.0, settings.noise_std, flat.size)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        shape = np.shape(delta[name])
        count = math.prod(shape)
        out[name] = noisy[offset : offset + count].astype(np.float32).reshape(shape)
        offset += count
    return out


class LocalPrivacy:
    """A node's DP state: settings, its own noise source and its accountant."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.accountant = GaussianAccountant(settings.delta)
        self._rng = np.random.default_rng()  # seeded from the OS: the noise stays secret

    def apply(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.accountant.record_flush(self.settings.noise_multiplier)
        return privatize(delta, self.settings, self._rng)

    def spent(self) -> PrivacySpent:
        return self.accountant.spent()
