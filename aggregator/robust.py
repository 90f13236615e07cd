"""Settings of Byzantine-robust and differentially private aggregation.

Plain FedBuff sums `a * delta` into one buffer, so one update scaled by 100
moves the model a hundred times as far as an honest one. The robust modes
keep one row per node instead (fedbus.aggregator.row_buffer) and combine
the rows at flush time:

- norm clipping scales each update down to a bound, fixed or adaptive (a
  multiple of the median norm of recent updates), so no single update can
  dominate by size;
- the coordinate-wise median, or the trimmed mean that drops the `beta`
  fraction of largest and smallest values per coordinate (Yin et al. 2018),
  ignore a minority of arbitrary rows altogether;
- central differential privacy (DP-FedAvg, McMahan et al. 2018) clips every
  node's contribution per model step to `clip` and adds Gaussian noise of
  standard deviation `noise_multiplier * clip` to the sum.

Each node contributes one row per model step however many updates it sends
in between: its updates are merged and clipped together, which bounds its
influence (a fast attacker gets no more rows than a slow honest node) and is
what gives DP its per-node sensitivity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fedbus.broker.errors import ConfigError


class Rule(str, Enum):
    """How the rows of one model step are combined."""

    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED = "trimmed"


@dataclass(frozen=True)
class RobustSettings:
    """Row combination and clipping; the defaults are plain FedBuff."""

    rule: Rule = Rule.MEAN
    #: Trimmed mean: fraction dropped at each end, 0 <= beta < 0.5.
    trim_beta: float = 0.1
    #: Fixed L2 bound on each update (None: none).
    clip_norm: float | None = None
    #: Adaptive bound: this multiple of the median norm of the last
    #: `clip_window` accepted updates (None: off). Until the window has
    #: `clip_window // 2` norms, only a fixed bound applies.
    adaptive_clip: float | None = None
    clip_window: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim beta must be in [0, 0.5), got {self.trim_beta}")
        if self.clip_norm is not None and not 0 < self.clip_norm < math.inf:
            raise ConfigError(f"clip norm must be > 0 and finite, got {self.clip_norm}")
        if self.adaptive_clip is not None and not 0 < self.adaptive_clip < math.inf:
            raise ConfigError(f"adaptive clip multiple must be > 0, got {self.adaptive_clip}")
        if self.clip_window < 2:
            raise ConfigError(f"clip window must be >= 2, got {self.clip_window}")

    @property
    def is_plain(self) -> bool:
        """True when aggregation is the plain weighted mean with no clipping."""
        return self.rule is Rule.MEAN and self.clip_norm is None and self.adaptive_clip is None


@dataclass(frozen=True)
class PrivacySettings:
    """Central DP: per-node clip bound, noise multiplier z and the delta reported."""

    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 < self.clip < math.inf:
            raise ConfigError(f"DP clip must be > 0 and finite, got {self.clip}")
        if not 0 < self.noise_multiplier < math.inf:
            raise ConfigError(f"DP noise multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"DP delta must be in (0, 1), got {self.delta}")

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip


def privacy_from_flags(
    clip: float | None, noise_multiplier: float | None, delta: float
) -> PrivacySettings | None:
    """DP settings from a command's `--dp-clip` / `--dp-noise-multiplier` (both or neither)."""
    if clip is None and noise_multiplier is None:
        return None
    if clip is None or noise_multiplier is None:
        raise ConfigError("--dp-clip and --dp-noise-multiplier go together")
    return PrivacySettings(clip, noise_multiplier, delta)


def check_compatible(robust: RobustSettings, privacy: PrivacySettings | None) -> None:
    """DP's noise is calibrated to the sensitivity of a sum: only the mean rule has one."""
    if privacy is not None and robust.rule is not Rule.MEAN:
        raise ConfigError(
            f"differential privacy needs the mean rule (its noise is calibrated to a sum), "
            f"not {robust.rule.value}"
        )
