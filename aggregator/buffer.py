"""Buffered asynchronous aggregation (FedBuff), with FedAsync and FedAvg as settings.

For an accepted update with delta D, staleness s and sample count n the
server adds a * D to a buffer, a = f(s) * g(n). When K updates are buffered:

    w <- w + lr * buffer / sum(g(n_i))

Dividing by sum(g) rather than sum(a) is deliberate: it keeps the staleness
discount absolute. With sum(a) a buffer whose updates are all equally stale,
or any buffer of one (FedAsync), would cancel f(s) entirely. With it:
- K = 1, lr = alpha is FedAsync: w <- w + alpha * f(s) * D;
- K = cohort, only s = 0 accepted, g(n) = n is synchronous FedAvg:
  w <- w + sum(n_i D_i) / sum(n_i), the sample-weighted mean of local models.

The robust and DP modes (fedbus.aggregator.robust) keep one row per node
instead of the running sum and combine the rows at the flush.

Everything here is pure state and arithmetic: no clock, no MQTT, no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from fedbus.aggregator.privacy import GaussianAccountant, PrivacySpent
from fedbus.aggregator.robust import PrivacySettings, RobustSettings, check_compatible
from fedbus.aggregator.row_buffer import RowBuffer
from fedbus.aggregator.server_optimizer import OptimizerSettings, OptimizerState, server_step
from fedbus.aggregator.staleness import StalenessKind, StalenessWeighting
from fedbus.broker.errors import ConfigError
from fedbus.broker.tensors import WireTensor

Weights = dict[str, np.ndarray]


class AggregationMode(str, Enum):
    FEDBUFF = "fedbuff"
    FEDASYNC = "fedasync"
    SYNC = "sync"


@dataclass(frozen=True)
class AggregationConfig:
    """How updates become model steps. Use the mode constructors below."""

    mode: AggregationMode = AggregationMode.FEDBUFF
    buffer_size: int = 10
    server_lr: float = 1.0
    staleness: StalenessWeighting = field(default_factory=StalenessWeighting)
    max_staleness: int = 50
    weight_by_samples: bool = True
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    robust: RobustSettings = field(default_factory=RobustSettings)
    privacy: PrivacySettings | None = None

    def __post_init__(self) -> None:
        check_compatible(self.robust, self.privacy)
        if self.buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if not self.server_lr > 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        if self.max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if self.mode is AggregationMode.FEDASYNC and self.buffer_size != 1:
            raise ConfigError("fedasync mode aggregates every update: buffer_size must be 1")
        if self.mode is AggregationMode.SYNC and self.max_staleness != 0:
            raise ConfigError("sync mode accepts only current-version updates: max_staleness 0")

    @classmethod
    def fedbuff(
        cls, buffer_size: int = 10, server_lr: float = 1.0, **kw: object
    ) -> AggregationConfig:
        return cls(AggregationMode.FEDBUFF, buffer_size, server_lr, **kw)  # type: ignore[arg-type]

    @classmethod
    def fedasync(cls, alpha: float = 0.6, **kw: object) -> AggregationConfig:
        return cls(AggregationMode.FEDASYNC, 1, alpha, **kw)  # type: ignore[arg-type]

    @classmethod
    def sync(cls, cohort_size: int) -> AggregationConfig:
        return cls(
            AggregationMode.SYNC,
            buffer_size=cohort_size,
            server_lr=1.0,
            staleness=StalenessWeighting(StalenessKind.CONSTANT),
            max_staleness=0,
            weight_by_samples=True,
        )


def update_coefficient(
    config: AggregationConfig, staleness: int, num_samples: int
) -> tuple[float, float]:
    """(a, g): the buffer weight a = f(s) g(n) of an update and its normaliser share g(n)."""
    g = float(num_samples) if config.weight_by_samples else 1.0
    return config.staleness.weight(staleness) * g, g


@dataclass
class BufferedAggregator:
    """The global model, its version and the buffer of not-yet-applied updates."""

    config: AggregationConfig
    weights: Weights
    version: int = 0
    buffer: Weights = field(init=False)
    buffered: int = 0
    normalizer: float = 0.0
    applied_updates: int = 0
    contributors: set[str] = field(default_factory=set)
    optimizer_state: OptimizerState = field(init=False)
    #: Secret seed of the DP noise; the noise of version v comes from (seed, v),
    #: so replaying the journal reproduces the model bit for bit.
    noise_seed: int = 0
    #: Robust and DP modes: one row per node instead of the running sum.
    rows: RowBuffer | None = field(init=False)
    _spent: PrivacySpent | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in self.weights.items()}
        self.buffer = {k: np.zeros_like(v) for k, v in self.weights.items()}
        self.optimizer_state = OptimizerState.fresh(self.config.optimizer, self.weights)
        self.rows = None
        if not self.config.robust.is_plain or self.config.privacy is not None:
            layout = {k: v.shape for k, v in self.weights.items()}
            self.rows = RowBuffer(layout, self.config.robust, self.config.privacy)

    def staleness_of(self, base_version: int) -> int:
        return self.version - base_version

    def add(
        self,
        node: str,
        delta: Mapping[str, np.ndarray | WireTensor],
        base_version: int,
        num_samples: int,
    ) -> bool:
        """Buffer one validated update; step the model when K are buffered.

        A delta tensor still in its wire encoding (any codec) is decoded
        straight into the buffer by the fused kernels, with no float32 copy.
        Returns True when the model moved to a new version.
        """
        a, g = update_coefficient(self.config, self.staleness_of(base_version), num_samples)
        if self.rows is not None:
            staleness_weight = self.config.staleness.weight(self.staleness_of(base_version))
            self.rows.add(node, delta, staleness_weight, g)
            return self._count_added(node, g)
        coefficient = np.float32(a)
        for name, acc in self.buffer.items():
            tensor = delta[name]
            if isinstance(tensor, WireTensor):
                tensor.accumulate_into(acc.reshape(-1), float(coefficient))
            else:
                acc += coefficient * tensor
        return self._count_added(node, g)

    def _count_added(self, node: str, g: float) -> bool:
        self.buffered += 1
        self.normalizer += g
        self.contributors.add(node)
        if self.buffered >= self.config.buffer_size:
            self.flush()
            return True
        return False

    def flush(self) -> bool:
        """Apply whatever is buffered (also a partial buffer, e.g. on a deadline)."""
        if self.buffered == 0:
            return False
        if self.rows is not None:
            noise = None
            if self.config.privacy is not None:
                noise = np.random.default_rng([self.noise_seed, self.version])
            step, normalizer = self.rows.unflatten(self.rows.combine(noise)), 1.0
            self.rows.clear()
        else:
            step, normalizer = self.buffer, self.normalizer
        self.weights = server_step(
            self.config.optimizer,
            self.optimizer_state,
            self.weights,
            step,
            normalizer,
            self.config.server_lr,
        )
        for acc in self.buffer.values():
            acc.fill(0.0)
        self.applied_updates += self.buffered
        self.buffered = 0
        self.normalizer = 0.0
        self.contributors.clear()
        self.version += 1
        return True

    def privacy_spent(self) -> PrivacySpent | None:
        """(epsilon, delta) after every model step so far (None without DP).

        Worst case over nodes: a node may have had a row in every step, each
        a Gaussian mechanism of sensitivity `clip` (fedbus.aggregator.privacy).
        """
        privacy = self.config.privacy
        if privacy is None:
            return None
        steps = self.version
        if self._spent is None or self._spent.steps != steps:
            # A bisection each: status and gauges ask after every batch, the
            # answer changes only with the version.
            state = {"steps": steps, "mu_squared": steps / privacy.noise_multiplier**2}
            self._spent = GaussianAccountant.from_state(state, privacy.delta).spent()
        return self._spent
