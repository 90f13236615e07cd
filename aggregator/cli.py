"""`fedbus aggregator`: run the aggregation daemon against a broker."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from fedbus.aggregator.buffer import AggregationConfig, AggregationMode, BufferedAggregator
from fedbus.aggregator.checkpoint import CheckpointError
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.daemon import AggregatorDaemon, DaemonSettings
from fedbus.aggregator.event_log import EVENT_LOG_FILE
from fedbus.aggregator.journal import JournalError
from fedbus.aggregator.robust_cli import (
    add_robust_arguments,
    noise_seed,
    privacy_settings,
    robust_settings,
)
from fedbus.aggregator.server_optimizer import OptimizerSettings, ServerOptimizer
from fedbus.aggregator.staleness import StalenessKind, StalenessWeighting
from fedbus.aggregator.store import AggregatorStore, audit_history
from fedbus.aggregator.task_config import load_pipeline, parse_hidden, training_task
from fedbus.broker.accounts import AuthDir
from fedbus.broker.cli_common import (
    add_bus_arguments,
    add_logging_arguments,
    bus_from_args,
    command_main,
    setup_logging,
    stop_on_signals,
)
from fedbus.broker.errors import ConfigError, ProtocolError
from fedbus.broker.layouts import LEARNERS, initial_weights
from fedbus.broker.topics import validate_id

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_bus_arguments(parser)
    task = parser.add_argument_group("task (what nodes train)")
    task.add_argument("--task-name", default="digits-20")
    task.add_argument("--learner", default="softmax", choices=LEARNERS)
    task.add_argument("--features", type=int, default=64, help="input features (default 64)")
    task.add_argument(
        "--classes",
        type=int,
        default=10,
        help="output classes (default 10); outputs for linear, 1 for logistic",
    )
    task.add_argument("--hidden", default=None, help="mlp hidden layer widths, e.g. 64 or 64,32")
    task.add_argument(
        "--init-seed", type=int, default=0, help="seed of the mlp's initial weights (default 0)"
    )
    task.add_argument(
        "--feature-names",
        default=None,
        help="comma-separated feature names in column order (for named pipeline steps)",
    )
    task.add_argument(
        "--pipeline",
        type=Path,
        default=None,
        help="preprocessing steps every node applies: a JSON list or TOML [[step]] tables",
    )
    task.add_argument(
        "--stats-quorum",
        type=int,
        default=1,
        help="nodes whose feature statistics are pooled before a standardize/minmax "
        "pipeline may train (default 1)",
    )
    task.add_argument("--local-epochs", type=int, default=1)
    task.add_argument("--batch-size", type=int, default=16)
    task.add_argument("--local-lr", type=float, default=0.1, help="nodes' SGD learning rate")
    agg = parser.add_argument_group("aggregation")
    agg.add_argument(
        "--mode",
        choices=[m.value for m in AggregationMode],
        default="fedbuff",
        help="fedbuff (buffered async), fedasync (K=1) or sync (FedAvg baseline)",
    )
    agg.add_argument(
        "--buffer-size",
        "-K",
        type=int,
        default=10,
        help="updates per model step in fedbuff mode; cohort size in sync mode",
    )
    agg.add_argument(
        "--server-lr",
        type=float,
        default=1.0,
        help="server learning rate (the mixing alpha in fedasync mode)",
    )
    agg.add_argument(
        "--server-optimizer",
        choices=[o.value for o in ServerOptimizer],
        default="sgd",
        help="optimizer on the pseudo-gradient -mean(delta) (FedOpt): sgd (plain FedBuff), "
        "fedavgm, fedadam or fedyogi",
    )
    agg.add_argument("--server-momentum", type=float, default=0.9, help="FedAvgM momentum")
    agg.add_argument("--server-beta1", type=float, default=0.9, help="FedAdam/FedYogi beta1")
    agg.add_argument("--server-beta2", type=float, default=0.99, help="FedAdam/FedYogi beta2")
    agg.add_argument(
        "--server-eps", type=float, default=1e-3, help="FedAdam/FedYogi adaptivity tau"
    )
    agg.add_argument("--staleness", choices=[k.value for k in StalenessKind], default="polynomial")
    agg.add_argument("--staleness-a", type=float, default=0.5, help="exponent / slope a")
    agg.add_argument("--staleness-b", type=int, default=4, help="hinge start b")
    agg.add_argument("--max-staleness", type=int, default=50)
    agg.add_argument(
        "--uniform-weights",
        action="store_true",
        help="weigh updates equally instead of by sample count",
    )
    agg.add_argument(
        "--flush-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="apply a partial buffer after this long (sync deadline)",
    )
    agg.add_argument(
        "--max-update-norm",
        type=float,
        default=None,
        metavar="L2",
        help="reject updates whose delta has a larger L2 norm (default: no bound)",
    )
    add_robust_arguments(parser)
    agg.add_argument(
        "--node-keys",
        type=Path,
        default=None,
        metavar="FILE",
        help="auth dir (or its accounts.json) of `fedbus broker add-node`: only its "
        "nodes may send updates, each signed with its enrolled key (reread on change)",
    )
    agg.add_argument(
        "--allow-node",
        action="append",
        default=None,
        metavar="ID",
        help="enrolled node id (repeat); default: any valid id",
    )
    seen = parser.add_argument_group("observability")
    seen.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics",
    )
    seen.add_argument(
        "--event-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON-lines event log (default: events.jsonl in --state-dir; '-' for none)",
    )
    durability = parser.add_argument_group("durability")
    durability.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="journal and checkpoints; an existing state is resumed "
        "(default: $XDG_STATE_HOME/fedbus/<fleet>/aggregator)",
    )
    durability.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        metavar="VERSIONS",
        help="write a checkpoint every N model versions (default 10)",
    )
    durability.add_argument(
        "--keep-checkpoints",
        type=int,
        default=None,
        metavar="N",
        help="prune all but the newest N checkpoints and their journals "
        "(default: keep the whole history, which lets it be replayed and audited)",
    )
    durability.add_argument(
        "--audit",
        action="store_true",
        help="do not serve: replay the whole journal of --state-dir from genesis, compare "
        "with the newest checkpoint and print a JSON report (exit 1 if they differ)",
    )
    add_logging_arguments(parser)


def default_state_dir(fleet: str) -> Path:
    """Where an aggregator keeps its state unless told otherwise (XDG base dirs)."""
    root = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(root) / "fedbus" / fleet / "aggregator"


def aggregation_config(args: argparse.Namespace) -> AggregationConfig:
    mode = AggregationMode(args.mode)
    optimizer = OptimizerSettings(
        ServerOptimizer(args.server_optimizer),
        args.server_momentum,
        args.server_beta1,
        args.server_beta2,
        args.server_eps,
    )
    if mode is AggregationMode.SYNC:
        return dataclasses.replace(
            AggregationConfig.sync(args.buffer_size),
            optimizer=optimizer,
            robust=robust_settings(args),
            privacy=privacy_settings(args),
        )
    staleness = StalenessWeighting(
        StalenessKind(args.staleness), args.staleness_a, args.staleness_b
    )
    return AggregationConfig(
        robust=robust_settings(args),
        privacy=privacy_settings(args),
        mode=mode,
        buffer_size=1 if mode is AggregationMode.FEDASYNC else args.buffer_size,
        server_lr=args.server_lr,
        staleness=staleness,
        max_staleness=args.max_staleness,
        weight_by_samples=not args.uniform_weights,
        optimizer=optimizer,
    )


def build_core(args: argparse.Namespace) -> AggregatorCore:
    """A fresh core (initial model, empty buffer) for the task and settings in `args`."""
    names = tuple(args.feature_names.split(",")) if args.feature_names else ()
    task = training_task(
        name=args.task_name,
        learner=args.learner,
        n_features=args.features,
        n_outputs=args.classes,
        hidden=parse_hidden(args.hidden),
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.local_lr,
        features=names,
        preprocess=load_pipeline(args.pipeline) if args.pipeline else (),
    )
    try:
        known = None
        if args.allow_node:
            known = frozenset(validate_id(n) for n in args.allow_node)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None
    initial = initial_weights(args.learner, task.weight_shapes, args.init_seed)
    if args.max_update_norm is not None and not args.max_update_norm > 0:
        raise ConfigError(f"--max-update-norm must be > 0, got {args.max_update_norm}")
    if args.stats_quorum < 1:
        raise ConfigError(f"--stats-quorum must be >= 1, got {args.stats_quorum}")
    verify_keys = None
    if args.node_keys is not None:
        verify_keys = AuthDir.of(args.node_keys).verify_keys()
    _, topics = bus_from_args(args)
    return AggregatorCore(
        task,
        BufferedAggregator(aggregation_config(args), initial),
        known_nodes=known,
        max_update_norm=args.max_update_norm,
        stats_quorum=args.stats_quorum,
        verify_keys=verify_keys,
        fleet=topics.fleet,
    )


def state_dir_of(args: argparse.Namespace) -> Path:
    _, topics = bus_from_args(args)
    return Path(args.state_dir or default_state_dir(topics.fleet))


def _event_log_path(flag: Path | None, state_dir: Path) -> Path | None:
    if flag is None:
        return state_dir / EVENT_LOG_FILE
    return None if str(flag) == "-" else flag


def build_daemon(args: argparse.Namespace) -> AggregatorDaemon:
    address, topics = bus_from_args(args)
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise ConfigError(f"--metrics-port: {args.metrics_port} is not a TCP port")
    if args.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.keep_checkpoints is not None and args.keep_checkpoints < 1:
        raise ConfigError(f"--keep-checkpoints must be >= 1, got {args.keep_checkpoints}")
    core = build_core(args)
    state_dir = state_dir_of(args)
    if core.aggregator.config.privacy is not None:
        core.aggregator.noise_seed = noise_seed(state_dir)
    store = AggregatorStore(state_dir, keep_checkpoints=args.keep_checkpoints)
    try:
        recovery = store.recover(core)
    except CheckpointError as exc:
        raise ConfigError(
            f"--state-dir {state_dir}: {exc}. Resume with the original settings, "
            "or give a new --state-dir for a new run."
        ) from None
    log.info(
        "state in %s: %s",
        state_dir,
        "fresh start"
        if recovery.fresh
        else f"resumed at version {core.version} ({recovery.replayed} journal entries replayed)",
    )
    settings = DaemonSettings(
        address,
        topics,
        flush_after=args.flush_after,
        checkpoint_every=args.checkpoint_every,
        node_keys=args.node_keys,
        event_log=_event_log_path(args.event_log, state_dir),
        metrics_port=args.metrics_port,
    )
    return AggregatorDaemon(core, settings, store)


def audit(args: argparse.Namespace) -> int:
    """Replay the whole journal from genesis and compare with the newest checkpoint.

    Prints one JSON line; exit 0 when the replayed model equals the
    checkpointed one bit for bit and no (node, seq) was applied twice.
    """
    state_dir = state_dir_of(args)
    try:
        report = audit_history(state_dir, build_core(args), build_core(args))
    except (CheckpointError, JournalError) as exc:
        raise ConfigError(f"--state-dir {state_dir}: {exc}") from None
    print(json.dumps(report))
    return 0 if report["consistent"] else 1


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    if args.audit:
        return audit(args)
    daemon = build_daemon(args)
    stop_on_signals(daemon.stopping)
    log.info(
        "aggregator for fleet %s on %s:%d, mode %s",
        daemon.topics.fleet,
        args.host,
        args.port,
        args.mode,
    )
    daemon.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus aggregator", __doc__, configure_parser, run, argv)
