"""`fedbus node`: run one edge node on local data until stopped.

The data is a CSV or .npz file (`--data`), or CSV rows streamed to stdin
(`--stdin`), named with flags or in a TOML file's [data] table (`--config`;
see fedbus.node.data_config). Raw data never leaves the node.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedbus.aggregator.robust import privacy_from_flags
from fedbus.broker.cli_common import (
    add_bus_arguments,
    add_logging_arguments,
    bus_from_args,
    command_main,
    setup_logging,
    stop_on_signals,
)
from fedbus.broker.credentials import load_credentials
from fedbus.broker.errors import ConfigError, DataError, FedbusError
from fedbus.broker.signing import load_signing_key
from fedbus.broker.topics import validate_id
from fedbus.kernels.quantize import ROUNDINGS
from fedbus.node.agent import EdgeNode, NodeSettings
from fedbus.node.compression import CodecSpec
from fedbus.node.data_config import load_data_config, open_source

log = logging.getLogger(__name__)


def add_codec_arguments(parser: argparse.ArgumentParser) -> None:
    """--codec and --rounding, shared by `fedbus node` and `fedbus demo`."""
    parser.add_argument(
        "--codec",
        default="f32",
        help="how updates are encoded: f32, q8, q4 or topk:F[+q8|+q4], e.g. topk:0.01+q8 "
        "(lossy codecs with error feedback; default f32)",
    )
    parser.add_argument(
        "--rounding",
        choices=ROUNDINGS,
        default="stochastic",
        help="q8/q4 rounding: stochastic (unbiased) or nearest (deterministic, at most half "
        "a step off, faster to encode); default stochastic",
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, dest="node_id", help="node id [A-Za-z0-9_-]{1,64}")
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file with a [data] table (see below)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="local training data: a .csv with a header or an .npz with X and y",
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="train on CSV rows streamed to stdin (header first), keeping the last --window",
    )
    parser.add_argument("--window", type=int, default=None, help="rows a stream keeps")
    parser.add_argument("--label-column", default=None, help="column holding the label")
    parser.add_argument(
        "--feature-columns", default=None, help="comma-separated feature columns, in order"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the local shuffles")
    parser.add_argument(
        "--index", type=int, default=0, help="node index in the per-run random streams"
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for an ack before resending",
    )
    add_codec_arguments(parser)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="device state and outbox, kept across restarts "
        "(default: $XDG_STATE_HOME/fedbus/<fleet>/node-<id>)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="Ed25519 seed (hex) to sign every update with (default: signing.key of "
        "--credentials, if there)",
    )
    parser.add_argument(
        "--dp-clip",
        type=float,
        default=None,
        metavar="L2",
        help="local differential privacy: clip every delta to this L2 norm on the device",
    )
    parser.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        metavar="Z",
        help="local DP: add Gaussian noise of std Z x --dp-clip to every weight",
    )
    parser.add_argument("--dp-delta", type=float, default=1e-5, help="local DP: reported delta")
    add_bus_arguments(parser)
    add_logging_arguments(parser)


def default_state_dir(fleet: str, node_id: str) -> Path:
    """Where a node keeps its seq counter and outbox unless told otherwise (XDG)."""
    root = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(root) / "fedbus" / fleet / f"node-{node_id}"


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    path = args.signing_key
    if path is None and args.credentials is not None:
        path = load_credentials(args.credentials).signing_key
    return None if path is None else load_signing_key(path)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    address, topics = bus_from_args(args)
    try:
        node_id = validate_id(args.node_id)
    except FedbusError as exc:
        raise ConfigError(f"--id: {exc}") from None
    if args.data is not None and not args.data.is_file():
        raise ConfigError(f"--data: no such file {args.data}")
    config = load_data_config(
        args.config,
        {
            "source": "stdin"
            if args.stdin
            else (None if args.data is None else args.data.suffix.lstrip(".") or "csv"),
            "path": args.data,
            "label": args.label_column,
            "features": args.feature_columns.split(",") if args.feature_columns else None,
            "window": args.window,
        },
    )
    try:
        source = open_source(config)
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    settings = NodeSettings(
        node_id,
        address,
        topics,
        seed=args.seed,
        node_index=args.index,
        ack_timeout=args.ack_timeout,
        codec=CodecSpec.parse(args.codec, rounding=args.rounding),
        state_dir=args.state_dir or default_state_dir(topics.fleet, node_id),
        signing_key=_signing_key(args),
        local_privacy=privacy_from_flags(args.dp_clip, args.dp_noise_multiplier, args.dp_delta),
    )
    node = EdgeNode(settings, source=source)
    stop_on_signals(node.stopping)
    log.info("node %s on %s data, bus %s:%d", node_id, config.source, args.host, args.port)
    node.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus node", __doc__, configure_parser, run, argv)
