"""The aggregator's robustness and privacy options: flags in, settings out.

Kept apart from `fedbus.aggregator.cli` so the robust rule, clipping and
central-DP flags, their checks and the DP noise seed read as one piece.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from fedbus.aggregator.robust import PrivacySettings, RobustSettings, Rule, privacy_from_flags
from fedbus.broker.durable_files import write_atomically
from fedbus.broker.errors import ConfigError


def add_robust_arguments(parser: argparse.ArgumentParser) -> None:
    robust = parser.add_argument_group("robustness and privacy")
    robust.add_argument(
        "--robust",
        choices=[r.value for r in Rule],
        default="mean",
        help="how a step combines its updates, one row per node: mean (FedBuff), "
        "coordinate-wise median or trimmed mean (default %(default)s)",
    )
    robust.add_argument(
        "--trim-beta",
        type=float,
        default=0.1,
        help="trimmed mean: fraction dropped at each end per coordinate (default %(default)s)",
    )
    robust.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        metavar="L2",
        help="scale every update down to at most this L2 norm",
    )
    robust.add_argument(
        "--adaptive-clip",
        type=float,
        default=None,
        metavar="MULTIPLE",
        help="scale every update down to MULTIPLE x the median norm of the last 50",
    )
    robust.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        metavar="Z",
        help="central differential privacy: Gaussian noise of std Z x --dp-clip on each "
        "step's sum; epsilon is reported in aggregator/status",
    )
    robust.add_argument(
        "--dp-clip", type=float, default=None, metavar="L2", help="DP: per-node bound per step"
    )
    robust.add_argument(
        "--dp-delta", type=float, default=1e-5, help="DP: the delta epsilon is reported at"
    )


def robust_settings(args: argparse.Namespace) -> RobustSettings:
    return RobustSettings(
        rule=Rule(args.robust),
        trim_beta=args.trim_beta,
        clip_norm=args.clip_norm,
        adaptive_clip=args.adaptive_clip,
    )


def privacy_settings(args: argparse.Namespace) -> PrivacySettings | None:
    return privacy_from_flags(args.dp_clip, args.dp_noise_multiplier, args.dp_delta)


def noise_seed(state_dir: Path) -> int:
    """The DP noise seed of this state dir, made once from the OS's randomness.

    Secret (mode 0600): whoever knows it can subtract the noise. Kept beside
    the journal so a restart replays the same noise.
    """
    path = state_dir / "dp-noise.seed"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, f"{secrets.randbits(128)}\n".encode(), mode=0o600)
    try:
        return int(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{path}: not a noise seed") from None
