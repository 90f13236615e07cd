"""Staleness weights f(s) for asynchronous aggregation.

An update computed on model version `base` arrives when the server is at
version `t`; its staleness is s = t - base. FedAsync (Xie, Koyejo, Gupta 2019)
scales such an update by f(s) <= 1 so that old information moves the model
less. Pure functions of s, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fedbus.broker.errors import ConfigError


class StalenessKind(str, Enum):
    CONSTANT = "constant"  # f(s) = 1
    POLYNOMIAL = "polynomial"  # f(s) = (1 + s)^-a
    HINGE = "hinge"  # f(s) = 1 if s <= b else 1 / (a (s - b) + 1)


@dataclass(frozen=True)
class StalenessWeighting:
    kind: StalenessKind = StalenessKind.POLYNOMIAL
    a: float = 0.5
    b: int = 4

    def __post_init__(self) -> None:
        if self.a < 0 or self.b < 0:
            raise ConfigError(f"staleness parameters must be >= 0, got a={self.a}, b={self.b}")

    def weight(self, staleness: int) -> float:
        """f(staleness); staleness must be >= 0."""
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.kind is StalenessKind.CONSTANT:
            return 1.0
        if self.kind is StalenessKind.POLYNOMIAL:
            return float((1.0 + staleness) ** -self.a)
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)
