"""`fedbus status`: a live view of a running fleet, from the bus alone.

Subscribes to the fleet's aggregator status, node status, updates, acks and
node metrics (read-only: an `observer` account is enough on a secured
broker) and redraws a table in place every `--interval` seconds: the
aggregator's version, mode and counters, then one row per node with its
state, model version, updates seen, how long ago, staleness, verdicts and
the fleet model's accuracy on the node's own data. `--once` waits `--wait`
seconds for the retained messages and traffic, prints once and exits;
`--json` prints the snapshot as JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Any

from fedbus.broker.cli_common import (
    add_bus_arguments,
    add_logging_arguments,
    bus_from_args,
    command_main,
    setup_logging,
)
from fedbus.broker.client import BusClient
from fedbus.broker.errors import BrokerError, ConfigError
from fedbus.broker.fleet_view import FleetView
from fedbus.broker.topics import Channel

#: Clear the screen and go home: the redraw "in place".
_CLEAR = "\x1b[H\x1b[2J"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--wait",
        type=float,
        default=2.0,
        help="with --once: seconds to gather retained messages and traffic first",
    )
    parser.add_argument("--json", action="store_true", help="snapshot as JSON (with --once)")
    parser.add_argument(
        "--max-rows", type=int, default=None, help="node rows shown (default: fit the terminal)"
    )
    add_bus_arguments(parser)
    add_logging_arguments(parser)
    parser.set_defaults(log_level="WARNING")


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _score(evaluation: dict[str, float]) -> str:
    for name in ("accuracy", "r2"):
        if name in evaluation:
            return f"{name[:3]} {_cell(evaluation[name])}"
    return "-"


def render(snapshot: dict[str, Any], max_rows: int = 40) -> str:
    """The snapshot as a terminal table (pure, for tests and the live view)."""
    lines = [f"fleet {snapshot['fleet']}"]
    agg = snapshot["aggregator"]
    if agg is None:
        lines.append("aggregator: no status seen yet")
    else:
        c = agg["counters"]
        line = (
            f"aggregator {agg['state']} · version {agg['version']} · {agg['mode'] or '?'} · "
            f"accepted {c.get('accepted', 0)} rejected {c.get('rejected', 0)} "
            f"duplicates {c.get('duplicates', 0)} · buffered {c.get('buffered', 0)}"
        )
        if "dp_epsilon" in c:
            line += f" · DP epsilon {_cell(c['dp_epsilon'], 2)} at delta {c.get('dp_delta')}"
        lines.append(line)
        by_reason = c.get("rejected_by_reason") or {}
        if by_reason:
            lines.append(
                "rejected by reason: " + ", ".join(f"{k} {v}" for k, v in by_reason.items())
            )
    lines.append(
        f"nodes: {snapshot['nodes_online']} online ({snapshot['nodes_training']} training), "
        f"{snapshot['nodes_offline']} offline, {len(snapshot['nodes'])} seen"
    )
    header = (
        "node",
        "state",
        "version",
        "updates",
        "last (s)",
        "stale",
        "acc/rej",
        "verdict",
        "local score",
        "loss",
    )
    rows = [header]
    for n in snapshot["nodes"][:max_rows]:
        rows.append(
            (
                n["node"],
                n["state"],
                _cell(n["version"]),
                _cell(n["updates"]),
                _cell(n["last_update_seconds_ago"], 1),
                _cell(n["staleness"]),
                f"{n['accepted']}/{n['rejected']}",
                _cell(n["last_verdict"]),
                _score(n["evaluation"]),
                _cell(n["evaluation"].get("loss", n["train_loss"])),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    hidden = len(snapshot["nodes"]) - max_rows
    if hidden > 0:
        lines.append(f"... and {hidden} more nodes (--max-rows, or --once --json for all)")
    return "\n".join(lines)


def _client(args: argparse.Namespace) -> tuple[BusClient, FleetView]:
    address, topics = bus_from_args(args)
    client = BusClient(
        f"fedbus-{topics.fleet}-status-{os.getpid()}", address, persistent_session=False
    )
    client.subscribe(topics.aggregator_status, qos=1)
    for channel in (Channel.STATUS, Channel.UPDATE, Channel.ACK, Channel.METRICS):
        client.subscribe(topics.all_nodes(channel), qos=1)
    return client, FleetView(topics)


def _drain(client: BusClient, view: FleetView, until: float) -> None:
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        message = client.receive(min(left, 0.2))
        if message is not None:
            view.apply(message.topic, message.payload, time.monotonic())


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    if args.interval <= 0 or args.wait < 0:
        raise ConfigError("--interval must be > 0 and --wait >= 0")
    client, view = _client(args)
    client.start()
    try:
        try:
            client.wait_connected(10)
        except BrokerError as exc:
            print(f"fedbus status: {exc}", file=sys.stderr)
            return 1
        if args.once:
            _drain(client, view, time.monotonic() + args.wait)
            snapshot = view.snapshot(time.monotonic())
            print(json.dumps(snapshot, indent=2) if args.json else render(snapshot, 10**9))
            return 0
        while True:
            _drain(client, view, time.monotonic() + args.interval)
            rows = args.max_rows or max(5, shutil.get_terminal_size().lines - 10)
            sys.stdout.write(_CLEAR + render(view.snapshot(time.monotonic()), rows) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        client.stop()


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus status", __doc__, configure_parser, run, argv)
