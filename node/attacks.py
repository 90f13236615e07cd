"""Byzantine nodes for robustness benchmarks and tests: what a compromised device sends.

A simulated attacker trains like an honest node and then replaces its delta
before compression and signing, so the update is well-formed, signed with
the node's own key and passes every protocol check: only the aggregation
rule stands between it and the model. The three attacks of the robustness
literature (e.g. Blanchard et al. 2017, Yin et al. 2018):

- `sign_flip`: the honest delta negated and enlarged (x`SIGN_FLIP_SCALE`),
  pushing the model away from where the data leads;
- `scale`: the honest delta times `SCALE_FACTOR` (a boosted update);
- `noise`: Gaussian noise of standard deviation `NOISE_STD` per weight
  instead of any training.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import numpy as np

SIGN_FLIP_SCALE = 4.0
SCALE_FACTOR = 100.0
NOISE_STD = 1.0


class Attack(str, Enum):
    SIGN_FLIP = "sign_flip"
    SCALE = "scale"
    NOISE = "noise"


def tamper(
    attack: Attack, delta: Mapping[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The delta a node running `attack` sends instead of its honest `delta`."""
    if attack is Attack.SIGN_FLIP:
        return {k: (-SIGN_FLIP_SCALE * v).astype(np.float32) for k, v in delta.items()}
    if attack is Attack.SCALE:
        return {k: (SCALE_FACTOR * v).astype(np.float32) for k, v in delta.items()}
    return {k: rng.normal(0.0, NOISE_STD, v.shape).astype(np.float32) for k, v in delta.items()}


def malicious_nodes(num_nodes: int, fraction: float, seed: int) -> frozenset[int]:
    """Which node indices attack: round(fraction * nodes) of them, drawn from `seed`."""
    if not 0 <= fraction < 1:
        raise ValueError(f"malicious fraction must be in [0, 1), got {fraction}")
    count = round(fraction * num_nodes)
    rng = np.random.default_rng([seed, 0xBAD])
    return frozenset(int(i) for i in rng.choice(num_nodes, size=count, replace=False))
