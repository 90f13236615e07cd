"""Simulated device and link conditions for the fleet simulator.

Real fleets straggle, drop out and lose their links; the simulator draws
those events from seeded streams so that runs are repeatable. The reference
task's straggler model comes from BENCH-TASK.md: after local run k, node i
waits 0.05 * LogNormal(-0.5, 1) seconds from default_rng([seed, i, k, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.node.local_work import straggler_delay


@dataclass(frozen=True)
class Heterogeneity:
    straggler_scale: float = 0.05  # seconds; 0 turns the straggler model off
    slow_fraction: float = 0.0  # share of nodes whose delays are `slow_factor` times longer
    slow_factor: float = 10.0
    dropout: float = 0.0  # probability that a finished update is lost with its device
    dropout_seconds: float = 2.0  # how long a dropped-out device stays silent
    link_flap: float = 0.0  # probability that the link drops just before a send

    def __post_init__(self) -> None:
        for name in ("slow_fraction", "dropout", "link_flap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be within [0, 1], got {value}")
        if self.straggler_scale < 0 or self.slow_factor < 1 or self.dropout_seconds < 0:
            raise ConfigError("straggler_scale >= 0, slow_factor >= 1, dropout_seconds >= 0")


@dataclass(frozen=True)
class RunConditions:
    """What happens to one local run of one node."""

    delay: float
    dropped: bool
    link_flap: bool


def slow_nodes(num_nodes: int, fraction: float, seed: int) -> frozenset[int]:
    """Which node indices form the slow tail (a fixed, seeded choice)."""
    count = int(round(fraction * num_nodes))
    chosen = np.random.default_rng([seed, 10**6]).choice(num_nodes, size=count, replace=False)
    return frozenset(int(i) for i in chosen)


def run_conditions(
    h: Heterogeneity, seed: int, node_index: int, run: int, slow: bool
) -> RunConditions:
    """Draw the conditions of local run `run` of node `node_index`."""
    delay = (
        straggler_delay(seed, node_index, run, scale=h.straggler_scale)
        if h.straggler_scale
        else 0.0
    )
    if slow:
        delay *= h.slow_factor
    events = np.random.default_rng([seed, node_index, run, 2]).random(2)
    return RunConditions(delay, bool(events[0] < h.dropout), bool(events[1] < h.link_flap))
