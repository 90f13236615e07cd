"""Updates per second the aggregator absorbs end to end through a real Mosquitto.

For 10 KB, 100 KB and 1 MB f32 updates (softmax layouts of 2,510, 25,010
and 250,010 floats), `--nodes` simulated nodes (bare paho clients) publish
pre-encoded valid updates (QoS 1, seq 1, 2, 3, ... per node) as fast as
the broker takes them. Measured, from the first publish to the last ack a
node receives on ack/<node>:

- the aggregator: the real daemon, `python -m fedbus.aggregator`, as a
  subprocess with a fresh state dir: receive, decode, validate, accumulate
  (FedBuff, K = `--buffer-size`; a model step, model publish and, every 10
  versions, a checkpoint are part of the load), journal with one fsync per
  batch, ack, PUBACK. base_version stays 0 and --max-staleness is 10^6, so
  no update is stale however far the versions move;
- the reference, measured in the same run on the same broker: a bare paho
  QoS 1 subscriber process (bench/busbench.py sink) draining the same
  publishes (another fleet, so the two never see each other's traffic);
  its time ends at the last message it receives.

Each size: one warm-up round, then `--repeats` rounds of reference then
aggregator, median of each. Loss is checked three ways: every (node, seq)
acked exactly once and accepted; the daemon's `accepted` counter (its last
status) equals what was sent, nothing rejected; the journal holds every
(node, seq) exactly once. Any loss is printed loudly and fails the run.

    python bench/throughput.py [--sizes 10KB,100KB,1MB] [--nodes 20] [--scale 1]
                               [--repeats 3] [--profile DIR]

`--state-root DIR` puts the state dir there (/dev/shm: a journal without a
disk, to see what the fsyncs cost). `--profile DIR` records the daemon with
py-spy (raw collapsed stacks) during the measured rounds. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbench import (
    NAGLE_ENV,
    AggregatorProcess,
    NodeFleet,
    finish_helper,
    latest_status,
    machine,
    parse_sizes,
    start_helper,
    update_payloads,
)

from fedbus.aggregator.store import applied_updates
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.messages import AckMessage
from fedbus.broker.topics import Channel, Topics

#: Updates per node per round at --scale 1 (20 nodes: 5,000 x 10 KB, 1,200 x 100 KB, 300 x 1 MB).
PER_NODE = {"10KB": 250, "100KB": 60, "1MB": 15}
TARGET = 0.8


@dataclass
class Round:
    rate: float
    publish_rate: float
    lost: int
    problems: list[str] = field(default_factory=list)


@dataclass
class SizeBench:
    """One size: the daemon, the node fleet and the next seq to send."""

    broker: ManagedBroker
    size: str
    nodes: list[str]
    daemon: AggregatorProcess
    fleet: NodeFleet
    raw_topics: Topics
    timeout: float
    next_seq: int = 1
    sent: set[tuple[str, int]] = field(default_factory=set)

    def aggregator_round(self, per_node: int) -> Round:
        payloads = update_payloads(self.size, self.nodes, self.next_seq, per_node)
        expected = {
            (n, s) for n in self.nodes for s in range(self.next_seq, self.next_seq + per_node)
        }
        self.next_seq += per_node
        self.sent |= expected
        total = len(expected)
        started = self.fleet.publish(self.daemon.topics, payloads)
        published = self.fleet.wait_pubacks(total, self.timeout)
        acks = self.fleet.wait_acks(total, self.timeout)
        problems: list[str] = []
        seen: Counter[tuple[str, int]] = Counter()
        for _, payload in acks:
            ack = decode(payload, AckMessage)
            if ack.seq is None:
                problems.append(f"ack without seq from {ack.node}: {ack.reason}")
                continue
            seen[(ack.node, ack.seq)] += 1
            if not ack.accepted or ack.duplicate:
                problems.append(f"{ack.node} seq {ack.seq}: accepted={ack.accepted} "
                                f"duplicate={ack.duplicate} reason={ack.reason}")  # fmt: skip
        missing = expected - set(seen)
        twice = [key for key, count in seen.items() if count > 1]
        if missing:
            problems.append(f"{len(missing)} updates never acked, e.g. {sorted(missing)[:3]}")
        if twice:
            problems.append(f"{len(twice)} updates acked more than once, e.g. {twice[:3]}")
        if set(seen) - expected:
            problems.append(f"acks for updates not sent: {sorted(set(seen) - expected)[:3]}")
        last = max((t for t, _ in acks), default=started)
        return Round(
            rate=len(set(seen) & expected) / max(last - started, 1e-9),
            publish_rate=total / (published - started) if published else 0.0,
            lost=len(missing),
            problems=problems,
        )

    def raw_round(self, per_node: int) -> Round:
        payloads = update_payloads(self.size, self.nodes, 1, per_node)
        total = len(self.nodes) * per_node
        sink = start_helper(
            "sink",
            self.broker.port,
            "--filter", self.raw_topics.all_nodes(Channel.UPDATE),
            "--count", str(total),
            "--timeout", str(self.timeout),
        )  # fmt: skip
        started = self.fleet.publish(self.raw_topics, payloads)
        published = self.fleet.wait_pubacks(total, self.timeout)
        result = finish_helper(sink, self.timeout + 10)
        lost = total - int(result["received"])
        problems = [f"raw subscriber lost {lost} of {total}"] if lost else []
        last = result["last"] if result["last"] is not None else time.monotonic()
        return Round(
            rate=int(result["received"]) / max(last - started, 1e-9),
            publish_rate=total / (published - started) if published else 0.0,
            lost=lost,
            problems=problems,
        )


def py_spy() -> str | None:
    """py-spy on PATH, else next to this interpreter (a venv's bin)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def check_daemon(bench: SizeBench, monitor: BusClient) -> list[str]:
    """Stop the daemon; compare its counters and its journal with what was sent."""
    code = bench.daemon.stop()
    problems = [] if code == 0 else [f"aggregator exited with status {code}"]
    status = latest_status(monitor, bench.daemon.topics, 2.0, state="stopped")
    if status is None:
        problems.append('no final "stopped" status from the aggregator')
    else:
        accepted = status.counters.get("accepted")
        rejected = status.counters.get("rejected")
        if accepted != len(bench.sent):
            problems.append(f"aggregator counted {accepted} accepted, {len(bench.sent)} were sent")
        if rejected:
            problems.append(f"aggregator rejected updates: {rejected}")
    journal = applied_updates(bench.daemon.state_dir)
    if len(journal) != len(set(journal)):
        problems.append(f"journal holds {len(journal) - len(set(journal))} updates twice")
    if set(journal) != bench.sent:
        problems.append(
            f"journal/sent mismatch: {len(bench.sent - set(journal))} sent but not journaled, "
            f"{len(set(journal) - bench.sent)} journaled but not sent"
        )
    return problems


def run_size(
    broker: ManagedBroker, size: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    tag = size.lower()
    nodes = [f"n{i:03d}" for i in range(args.nodes)]
    per_node = max(1, round(PER_NODE[size] * args.scale))
    monitor = BusClient(
        f"bench-monitor-{tag}",
        BrokerAddress(broker.host, broker.port, chunk_limit=None),
        persistent_session=False,
        inbox_size=100_000,
    )
    monitor.start()
    monitor.wait_connected(10)
    daemon_args = ["--mode", "fedbuff", "-K", str(args.buffer_size), "--max-staleness", "1000000"]
    daemon = AggregatorProcess(broker, f"tp-agg-{tag}", size, workdir / f"state-{tag}", daemon_args)
    daemon.start(monitor)
    fleet = NodeFleet(broker.host, broker.port, nodes, daemon.topics)
    bench = SizeBench(broker, size, nodes, daemon, fleet, Topics(f"tp-raw-{tag}"), args.timeout)
    profiler = None
    raws: list[Round] = []
    aggs: list[Round] = []
    try:
        warm_raw, warm_agg = bench.raw_round(2), bench.aggregator_round(2)
        problems = warm_raw.problems + warm_agg.problems
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profiler = subprocess.Popen(
                [str(py_spy()), "record", "--pid", str(daemon.pid), "--format", "raw",
                 "--rate", "250", "--nonblocking",
                 "-o", str(args.profile / f"aggregator-{tag}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
        for _ in range(args.repeats):
            raws.append(bench.raw_round(per_node))
            aggs.append(bench.aggregator_round(per_node))
            latest_status(monitor, daemon.topics, 0)  # keep the monitor's inbox short
            problems += raws[-1].problems + aggs[-1].problems
    finally:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        fleet.close()
        problems_at_stop = check_daemon(bench, monitor)
        monitor.stop()
    problems += problems_at_stop
    raw = statistics.median(r.rate for r in raws)
    agg = statistics.median(r.rate for r in aggs)
    return {
        "size": size,
        "update_bytes": len(update_payloads(size, ["n000"], 1, 1)["n000"][0]),
        "updates_per_round": per_node * args.nodes,
        "raw_updates_per_s": round(raw, 1),
        "aggregator_updates_per_s": round(agg, 1),
        "ratio": round(agg / raw, 3),
        "ratio_median_of_rounds": round(
            statistics.median(a.rate / r.rate for a, r in zip(aggs, raws, strict=True)), 3
        ),
        "publish_updates_per_s": round(statistics.median(r.publish_rate for r in raws + aggs), 1),
        "raw_rounds": [round(r.rate, 1) for r in raws],
        "aggregator_rounds": [round(r.rate, 1) for r in aggs],
        "lost": sum(r.lost for r in raws + aggs),
        "updates_sent_to_aggregator": len(bench.sent),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10KB,100KB,1MB", help="comma-separated")
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    parser.add_argument("--scale", type=float, default=1.0, help=f"x updates per node {PER_NODE}")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many rounds")
    parser.add_argument("--buffer-size", type=int, default=10, help="FedBuff K (default 10)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per round, seconds")
    parser.add_argument(
        "--state-root",
        type=Path,
        default=None,
        help="where the daemon's state dir goes (default: the temp dir; /dev/shm: no disk)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument(
        "--nagle", action="store_true", help="leave Nagle on in the raw clients (paho's default)"
    )
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    if args.nagle:
        os.environ[NAGLE_ENV] = "1"
    if args.profile is not None and py_spy() is None:
        parser.error("--profile needs py-spy on PATH or in the venv (pip install py-spy)")
    print(f"machine: {machine()}; {args.nodes} nodes, FedBuff K={args.buffer_size}, "
          f"median of {args.repeats} rounds")  # fmt: skip
    header = [
        "size",
        "bytes",
        "updates",
        "raw_upd/s",
        "aggr_upd/s",
        "aggr/raw",
        "pub_upd/s",
        "lost",
    ]
    print(f"{header[0]:<7}" + "".join(f"{h:>12}" for h in header[1:]))
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="fedbus-throughput-", dir=args.state_root))
    try:
        with ManagedBroker() as broker:
            for size in sizes:
                row = run_size(broker, size, args, workdir)
                rows.append(row)
                values = (row["update_bytes"], row["updates_per_round"], row["raw_updates_per_s"],
                          row["aggregator_updates_per_s"], row["ratio"],
                          row["publish_updates_per_s"], row["lost"])  # fmt: skip
                print(f"{size:<7}" + "".join(f"{v:>12}" for v in values), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [f"{r['size']}: {p}" for r in rows for p in r["problems"]]
    for problem in failed:
        print(f"LOSS OR REJECTION: {problem}", file=sys.stderr)
    target = all(r["ratio"] >= TARGET for r in rows if r["size"] in ("100KB", "1MB"))
    print(json.dumps({"bench": "throughput", "machine": machine(), "nodes": args.nodes,
                      "rows": rows, "zero_loss": not failed,
                      f"ratio_at_least_{TARGET}_at_100KB_1MB": target}))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
