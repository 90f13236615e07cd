"""`fedbus demo`: a real broker, the aggregator daemon and a simulated fleet on real data.

By default the reference task of BENCH-TASK.md: scikit-learn's bundled
digits, 20 nodes (Dirichlet(0.5)), softmax regression (or `--model mlp`),
one local epoch of SGD and the lognormal straggler model. `--dataset
diabetes` is regression on raw clinical values with federated
normalization; `--dataset sensors` is fault detection on streaming sensor
windows with imputation, anomaly dropping and federated normalization (see
fedbus.node.demo_setup). It starts Mosquitto from the project's config on a
free port, the aggregator as its own process (`python -m
fedbus.aggregator`), the fleet as threads with one MQTT connection each, and
an observer that scores every published model version on held-out rows. It
stops at the target (or the time limit) and writes a run folder with
summary.json, scores.csv, accuracy.png, the event log and the plots of
`fedbus report` (staleness, bytes per update, contributions per node).

Exit status: 0 when the target was reached, 3 when it was not, 1 when a part
failed (broker, aggregator), 2 for a bad option.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedbus.aggregator.event_log import EVENT_LOG_FILE
from fedbus.aggregator.task_config import parse_hidden
from fedbus.broker.cli_common import add_logging_arguments, setup_logging
from fedbus.broker.client import BrokerAddress
from fedbus.broker.errors import ConfigError, FedbusError
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.topics import Topics
from fedbus.node.cli import add_codec_arguments
from fedbus.node.compression import CodecSpec
from fedbus.node.conditions import Heterogeneity
from fedbus.node.demo_security import DemoSecurity, add_security_arguments
from fedbus.node.demo_setup import DATASETS, DemoSetup, build_setup
from fedbus.node.fleet import Fleet
from fedbus.node.observer import ModelObserver, VersionScore
from fedbus.node.report import plot_accuracy, write_scores_csv
from fedbus.node.report_cli import report

log = logging.getLogger(__name__)

MODES = {"async": "fedbuff", "fedasync": "fedasync", "sync": "sync"}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=list(MODES),
        default="async",
        help="async = FedBuff, fedasync = FedAsync (K=1), sync = FedAvg baseline",
    )
    parser.add_argument("--nodes", type=int, default=20, help="fleet size (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of shuffles and conditions")
    parser.add_argument(
        "--dataset", choices=DATASETS, default="digits", help="what to train on (default digits)"
    )
    parser.add_argument(
        "--model",
        choices=["softmax", "mlp", "linear", "logistic"],
        default=None,
        help="digits: softmax (default) or mlp; diabetes trains linear, sensors logistic",
    )
    parser.add_argument(
        "--hidden", default="64", help="mlp hidden layer widths, e.g. 64 or 64,32 (default 64)"
    )
    parser.add_argument("--partition", choices=["dirichlet", "iid"], default="dirichlet")
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5)
    parser.add_argument(
        "--target",
        "--target-accuracy",
        dest="target",
        type=float,
        default=None,
        help="test accuracy (R² for diabetes) that counts as reached; default per data set: "
        "digits 0.93, diabetes the central least-squares R² minus 0.05, sensors 0.85",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop after this long even if the target was not reached",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="run for --max-seconds instead of stopping at the target",
    )
    agg = parser.add_argument_group("aggregation")
    agg.add_argument("--buffer-size", "-K", type=int, default=10, help="FedBuff K (default 10)")
    agg.add_argument("--server-lr", type=float, default=1.0, help="FedBuff server learning rate")
    agg.add_argument("--alpha", type=float, default=0.6, help="FedAsync mixing rate")
    agg.add_argument(
        "--server-optimizer",
        choices=["sgd", "fedavgm", "fedadam", "fedyogi"],
        default="sgd",
        help="the aggregator's server optimizer (FedOpt; default sgd, plain FedBuff)",
    )
    agg.add_argument(
        "--staleness", choices=["constant", "polynomial", "hinge"], default="polynomial"
    )
    agg.add_argument("--staleness-a", type=float, default=0.5)
    agg.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="sync/FedBuff: apply a partial buffer after this long",
    )
    add_codec_arguments(parser)
    add_security_arguments(parser)
    het = parser.add_argument_group("device and link conditions")
    het.add_argument(
        "--straggler-scale",
        type=float,
        default=0.05,
        help="mean straggler delay in seconds (0 = off; default 0.05)",
    )
    het.add_argument(
        "--slow-fraction", type=float, default=0.0, help="share of nodes 10x slower (the slow tail)"
    )
    het.add_argument(
        "--dropout", type=float, default=0.0, help="probability an update is lost with its device"
    )
    het.add_argument(
        "--link-flap", type=float, default=0.0, help="probability the link drops before a send"
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where to write summary.json, scores.csv, accuracy.png (default runs/<time>-<mode>)",
    )
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    out.add_argument("--no-progress", action="store_true", help="no live progress bar")
    add_logging_arguments(parser)
    parser.set_defaults(log_level="WARNING")


def _aggregator_command(
    args: argparse.Namespace,
    broker: ManagedBroker,
    fleet: str,
    state_dir: Path,
    setup: DemoSetup,
    run_dir: Path,
    security: DemoSecurity,
) -> list[str]:
    mode = MODES[args.mode]
    command = [
        sys.executable,
        "-m",
        "fedbus.aggregator",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--fleet",
        fleet,
        "--mode",
        mode,
        "--task-name",
        setup.dataset,
        "--learner",
        setup.learner,
        "--features",
        str(setup.n_features),
        "--classes",
        str(setup.n_outputs),
        "--local-lr",
        str(setup.local_lr),
        "--batch-size",
        str(setup.batch_size),
        "--init-seed",
        str(args.seed),
        "--staleness",
        args.staleness,
        "--staleness-a",
        str(args.staleness_a),
        "--state-dir",
        str(state_dir),
        "--event-log",
        str(run_dir / EVENT_LOG_FILE),
        "--log-json",
        "--log-level",
        "INFO",
    ]
    if mode == "sync":
        command += ["--buffer-size", str(args.nodes)]
    elif mode == "fedasync":
        command += ["--server-lr", str(args.alpha)]
    else:
        command += ["--buffer-size", str(args.buffer_size), "--server-lr", str(args.server_lr)]
    if args.deadline is not None:
        command += ["--flush-after", str(args.deadline)]
    command += ["--server-optimizer", args.server_optimizer]
    if setup.hidden:
        command += ["--hidden", ",".join(str(h) for h in setup.hidden)]
    if setup.feature_names:
        command += ["--feature-names", ",".join(setup.feature_names)]
    command += security.aggregator_flags()
    if setup.pipeline:
        pipeline = run_dir / "pipeline.json"
        pipeline.write_text(json.dumps(setup.pipeline, indent=2) + "\n")
        # every node's statistics are pooled before anyone trains
        command += ["--pipeline", str(pipeline), "--stats-quorum", str(args.nodes)]
    return command


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" versions", dynamic_ncols=True, file=sys.stderr)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run one demo and return its summary (also written to the run folder)."""
    if args.nodes < 1:
        raise ConfigError("--nodes must be >= 1")
    if args.mode == "sync" and args.dropout > 0 and args.deadline is None:
        raise ConfigError("--mode sync with --dropout needs --deadline: a round waits for all")
    heterogeneity = Heterogeneity(
        straggler_scale=args.straggler_scale,
        slow_fraction=args.slow_fraction,
        dropout=args.dropout,
        link_flap=args.link_flap,
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or Path("runs") / f"{stamp}-{args.dataset}-{args.mode}"
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(
        args.dataset,
        nodes=args.nodes,
        seed=args.seed,
        model=args.model,
        hidden=parse_hidden(args.hidden),
        partition=args.partition,
        alpha=args.dirichlet_alpha,
    )
    target = setup.target if args.target is None else args.target
    topics = Topics("demo")
    security = DemoSecurity(args, run_dir, topics.fleet, args.nodes)
    with ManagedBroker(extra_lines=security.broker_lines()) as broker:
        address = BrokerAddress(broker.host, broker.port)
        fleet = Fleet(
            setup.node_data,
            address,
            topics,
            seed=args.seed,
            heterogeneity=heterogeneity,
            state_root=run_dir / "nodes",
            codec=CodecSpec.parse(args.codec, rounding=args.rounding),
            access=lambda node: security.node_access(address, node),
            tampers=security.tamper_for,
        )
        observer = ModelObserver(
            security.observer_address(address), topics, setup.X_test, setup.y_test, kind=setup.kind
        )
        feeders = [threading.Thread(target=f.run, daemon=True) for f in setup.feeds]
        for feeder in feeders:
            feeder.start()
        fleet.start()
        fleet.wait_connected(30)
        observer.start()
        aggregator_log = (run_dir / "aggregator.log").open("w")
        aggregator = subprocess.Popen(
            _aggregator_command(
                args, broker, topics.fleet, run_dir / "aggregator-state", setup, run_dir, security
            ),
            stderr=aggregator_log,
            stdout=subprocess.DEVNULL,
        )
        bar = _progress(not args.no_progress and not args.json)
        reached: VersionScore | None = None
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.max_seconds + 30:
                if aggregator.poll() is not None:
                    raise FedbusError(
                        f"aggregator exited with {aggregator.returncode}; "
                        f"see {run_dir / 'aggregator.log'}"
                    )
                for score in observer.poll(0.05):
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            version=score.version,
                            **{setup.metric: f"{score.score:.3f}"},
                            t=f"{score.seconds:.1f}s",
                        )
                    if reached is None and score.score >= target:
                        reached = score
                latest = observer.latest
                elapsed = latest.seconds if latest else 0.0
                if latest is not None and (
                    elapsed >= args.max_seconds or (reached is not None and not args.keep_running)
                ):
                    break
            observer.poll(0.3)  # the status that follows the last model
        finally:
            if bar is not None:
                bar.close()
            for feed in setup.feeds:
                feed.stopping.set()
            fleet.stop()
            aggregator.terminate()
            try:
                aggregator.wait(10)
            except subprocess.TimeoutExpired:
                aggregator.kill()
            aggregator_log.close()
            observer.poll(0.2)
            observer.stop()
    summary = _summary(args, setup, target, observer, fleet, reached, run_dir, security)
    write_scores_csv(observer.scores, run_dir / "scores.csv", setup.metric)
    # The report's plots (staleness, bytes, contributions, metric against updates).
    summary["report_plots"] = [Path(p).name for p in report(run_dir)["plots"]]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    model = setup.learner + (f" {setup.hidden}" if setup.hidden else "")
    plot_accuracy(
        {args.mode: observer.scores},
        run_dir / "accuracy.png",
        target=target,
        title=f"{setup.dataset} ({model}), {args.nodes} nodes, mode {args.mode}",
        metric=setup.metric,
    )
    return summary


def _summary(
    args: argparse.Namespace,
    setup: DemoSetup,
    target: float,
    observer: ModelObserver,
    fleet: Fleet,
    reached: VersionScore | None,
    run_dir: Path,
    security: DemoSecurity,
) -> dict[str, Any]:
    counters = dict(observer.status.counters) if observer.status else {}
    latest = observer.latest
    totals = fleet.totals()
    metric = setup.metric
    final = None if latest is None else round(latest.score, 4)
    best = round(observer.best_score, 4) if observer.scores else None
    return {
        "task": "digits-20" if setup.dataset == "digits" else setup.dataset,
        "dataset": setup.dataset,
        "model": setup.learner,
        "hidden": list(setup.hidden),
        "metric": metric,
        "mode": args.mode,
        "nodes": args.nodes,
        "seed": args.seed,
        "partition": args.partition if setup.dataset == "digits" else "iid",
        "target": target,
        "target_accuracy": target if metric == "accuracy" else None,
        "central_baseline": setup.baseline or None,
        "reached_target": reached is not None,
        "seconds_to_target": None if reached is None else round(reached.seconds, 3),
        "version_at_target": None if reached is None else reached.version,
        "updates_to_target": None
        if reached is None
        else observer.applied_at_version.get(reached.version),
        "final_version": None if latest is None else latest.version,
        f"final_{metric}": final,
        f"best_{metric}": best,
        "final_rmse": None if latest is None or latest.rmse is None else round(latest.rmse, 3),
        "elapsed_seconds": None if latest is None else round(latest.seconds, 3),
        "updates_accepted": counters.get("accepted"),
        "updates_rejected": counters.get("rejected"),
        "rejected_by_reason": counters.get("rejected_by_reason"),
        "staleness_histogram": counters.get("staleness_histogram"),
        "codec": args.codec,
        "bytes_per_update": _bytes_per_update(counters),
        "bytes_up": totals.bytes_sent,
        "bytes_down": totals.bytes_received,
        "fleet": asdict(totals),
        **security.summary(),
        "dp_epsilon": counters.get("dp_epsilon"),
        "run_dir": str(run_dir),
    }


def _bytes_per_update(counters: dict[str, Any]) -> float | None:
    """Mean update payload the aggregator received (every copy it decided on)."""
    received = sum(int(counters.get(k) or 0) for k in ("accepted", "rejected", "duplicates"))
    return round(int(counters.get("bytes_in") or 0) / received, 1) if received else None


def _print_summary(summary: dict[str, Any]) -> None:
    reached = summary["reached_target"]
    metric = summary["metric"]
    label = "test accuracy" if metric == "accuracy" else "test R²"
    model = summary["model"] + (f" {tuple(summary['hidden'])}" if summary["hidden"] else "")
    print(
        f"\nfedbus demo: {summary['dataset']} with {model}, mode {summary['mode']}, "
        f"{summary['nodes']} nodes, {summary['partition']} partition, seed {summary['seed']}"
    )
    baseline = summary["central_baseline"]
    if baseline:
        print(
            f"  central least squares on all training rows: R² {baseline['r2']:.4f}, "
            f"RMSE {baseline['rmse']:.2f} (target: within 0.05)"
        )
    if reached:
        print(
            f"  reached {summary['target']:.3f} {label} after "
            f"{summary['seconds_to_target']:.2f} s, model version {summary['version_at_target']}, "
            f"{summary['updates_to_target']} updates applied"
        )
    else:
        print(f"  did NOT reach {summary['target']:.3f} {label} (best {summary[f'best_{metric}']})")
    extra = f", RMSE {summary['final_rmse']}" if summary.get("final_rmse") is not None else ""
    print(
        f"  final {label} {summary[f'final_{metric}']}{extra} at version "
        f"{summary['final_version']} after {summary['elapsed_seconds']} s"
    )
    print(
        f"  updates accepted {summary['updates_accepted']}, rejected {summary['updates_rejected']}"
    )
    print(
        f"  codec {summary['codec']}: {summary['bytes_per_update']} bytes per update; "
        f"bytes up {summary['bytes_up']:,}, bytes down {summary['bytes_down']:,}"
    )
    print(f"  run folder: {summary['run_dir']} (summary.json, scores.csv, events.jsonl, *.png)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedbus demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_json)
    try:
        summary = run_demo(args)
    except ConfigError as exc:
        parser.exit(2, f"fedbus demo: error: {exc}\n")
    except FedbusError as exc:
        print(f"fedbus demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0 if summary["reached_target"] else 3
