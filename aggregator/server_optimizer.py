"""Server optimizers for the buffered step: SGD, FedAvgM, FedAdam, FedYogi.

FedOpt (Reddi et al., "Adaptive Federated Optimization", ICLR 2021) treats
the averaged client delta as a pseudo-gradient, g = -buffer / normalizer,
and lets the server apply any first-order optimizer to it. Plain server SGD
with learning rate lr is exactly FedBuff's step w + lr * buffer / normalizer;
momentum (FedAvgM) smooths noisy asynchronous arrivals, and the adaptive
ones (FedAdam, FedYogi) give each coordinate its own step size, which helps
with heterogeneous (non-IID) fleets.

State (moment estimates, step count) lives here and goes into the
aggregator's checkpoint, so recovery resumes the same trajectory. The
arithmetic runs in fedbus.kernels.optimizers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from fedbus.broker.errors import ConfigError

Weights = dict[str, np.ndarray]


class ServerOptimizer(str, Enum):
    SGD = "sgd"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


@dataclass(frozen=True)
class OptimizerSettings:
    kind: ServerOptimizer = ServerOptimizer.SGD
    momentum: float = 0.9  # FedAvgM
    beta1: float = 0.9  # FedAdam / FedYogi
    beta2: float = 0.99
    #: The adaptivity tau of FedOpt; its paper finds 1e-3 a good default.
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if not (0 <= self.momentum < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("server momentum and betas must be in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"server eps must be > 0, got {self.eps}")


#: The moment buffers each optimizer keeps per tensor.
SLOTS = {
    ServerOptimizer.SGD: (),
    ServerOptimizer.FEDAVGM: ("velocity",),
    ServerOptimizer.FEDADAM: ("m", "v"),
    ServerOptimizer.FEDYOGI: ("m", "v"),
}


@dataclass
class OptimizerState:
    """Moment buffers (slot -> tensor name -> array) and the number of steps taken."""

    step: int = 0
    slots: dict[str, Weights] = field(default_factory=dict)

    @classmethod
    def fresh(cls, settings: OptimizerSettings, like: Mapping[str, np.ndarray]) -> OptimizerState:
        return cls(
            0,
            {
                slot: {name: np.zeros_like(w, dtype=np.float32) for name, w in like.items()}
                for slot in SLOTS[settings.kind]
            },
        )


def apply_buffer(
    weights: Mapping[str, np.ndarray],
    buffer: Mapping[str, np.ndarray],
    normalizer: float,
    server_lr: float,
) -> Weights:
    """Plain server SGD: w + lr * buffer / normalizer, as new float32 arrays."""
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    scale = np.float32(server_lr / normalizer)
    return {name: (w + scale * buffer[name]).astype(np.float32) for name, w in weights.items()}


def server_step(
    settings: OptimizerSettings,
    state: OptimizerState,
    weights: Mapping[str, np.ndarray],
    buffer: Mapping[str, np.ndarray],
    normalizer: float,
    lr: float,
) -> Weights:
    """One optimizer step on the pseudo-gradient -buffer/normalizer; new float32 weights.

    `state` is advanced in place. Plain SGD keeps the 0.1 arithmetic exactly
    (w + float32(lr / normalizer) * buffer), so existing journals and
    recordings replay to the same bits.
    """
    if settings.kind is ServerOptimizer.SGD:
        return apply_buffer(weights, buffer, normalizer, lr)
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    from fedbus.kernels import optimizers  # numba: loaded only by the optimizers that need it

    state.step += 1
    new = {}
    for name, w in weights.items():
        updated = np.array(w, dtype=np.float32).reshape(-1)
        grad = (buffer[name] * np.float32(-1.0 / normalizer)).astype(np.float32).reshape(-1)
        if settings.kind is ServerOptimizer.FEDAVGM:
            velocity = state.slots["velocity"][name].reshape(-1)
            optimizers.sgd_momentum_step(updated, grad, velocity, lr, settings.momentum)
        else:
            step = (
                optimizers.adam_step
                if settings.kind is ServerOptimizer.FEDADAM
                else optimizers.yogi_step
            )
            m = state.slots["m"][name].reshape(-1)
            v = state.slots["v"][name].reshape(-1)
            step(updated, grad, m, v, lr, settings.beta1, settings.beta2, settings.eps, state.step)
        new[name] = updated.reshape(w.shape)
    return new
