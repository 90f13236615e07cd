"""Per-node randomness of the reference task: local shuffles and straggler delays.

Each draw gets its own generator seeded from ``[seed, node_index, run_index, stream]``
so that a node's k-th local run shuffles and waits the same way whatever order
the fleet's threads happen to run in, and whatever other nodes did before it.
Stream 0 is the shuffle, stream 1 the straggler delay (see BENCH-TASK.md, which
uses ``seed = 0``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["local_shuffle_rng", "straggler_delay"]

_SHUFFLE_STREAM = 0
_DELAY_STREAM = 1


def local_shuffle_rng(seed: int, node_index: int, run_index: int) -> np.random.Generator:
    """The generator whose ``permutation`` orders node ``node_index``'s run ``run_index``."""
    return np.random.default_rng([seed, node_index, run_index, _SHUFFLE_STREAM])


def straggler_delay(seed: int, node_index: int, run_index: int, scale: float = 0.05) -> float:
    """Seconds the node waits after local run ``run_index``: ``scale * LogNormal(-0.5, 1)``.

    With ``mu = -0.5, sigma = 1`` the log-normal's mean is exactly 1, so ``scale``
    is the mean delay (0.05 s in the reference task) while the tail still holds
    the occasional multi-second straggler that asynchronous aggregation is for.
    """
    rng = np.random.default_rng([seed, node_index, run_index, _DELAY_STREAM])
    return float(scale * rng.lognormal(mean=-0.5, sigma=1.0))
