"""Seeing the fleet: event log, Prometheus metrics, `fedbus status`, `fedbus report`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.daemon import AggregatorDaemon, DaemonSettings
from fedbus.aggregator.event_log import EventLog, read_events
from fedbus.broker import status_cli
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import encode
from fedbus.broker.fleet_view import FleetView
from fedbus.broker.launcher import free_port
from fedbus.broker.messages import (
    AckMessage,
    AggregatorStatus,
    NodeMetrics,
    NodeState,
    NodeStatus,
    RejectReason,
    TrainingTask,
    UpdateMessage,
)
from fedbus.broker.status_cli import render
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Topics
from fedbus.node.report_cli import report, summarize

SHAPES = {"W": (3, 2), "b": (2,)}
TOPICS = Topics("obs")


def _update(node: str, seq: int, base: int = 0, value: float = 0.1) -> bytes:
    delta = {name: np.full(shape, value, np.float32) for name, shape in SHAPES.items()}
    return encode(UpdateMessage(node, seq, base, 10, encode_weights(delta), train_loss=0.5))


# ------------------------------------------------------------------ fleet view


def test_fleet_view_pieces_together_nodes_and_aggregator() -> None:
    view = FleetView(TOPICS)
    view.apply(TOPICS.aggregator_status, encode(AggregatorStatus("running", 4, "fedbuff")), 1.0)
    view.apply(TOPICS.status("n1"), encode(NodeStatus("n1", NodeState.TRAINING, 4)), 1.0)
    view.apply(TOPICS.status("n2"), encode(NodeStatus("n2", NodeState.OFFLINE, 2)), 1.0)
    view.apply(TOPICS.update("n1"), _update("n1", 7, base=3), 2.0)
    view.apply(TOPICS.ack("n1"), encode(AckMessage("n1", 7, True, 5)), 2.1)
    view.apply(
        TOPICS.ack("n1"), encode(AckMessage("n1", 8, False, 5, reason=RejectReason.STALE)), 2.2
    )
    metrics = NodeMetrics("n1", 4, 80, 80, evaluation={"accuracy": 0.9, "loss": 0.3})
    view.apply(TOPICS.metrics("n1"), encode(metrics), 2.3)
    view.apply(TOPICS.update("n2"), b"\xc1not msgpack", 2.4)
    snapshot = view.snapshot(now=5.0)
    assert snapshot["aggregator"]["version"] == 4
    assert (snapshot["nodes_online"], snapshot["nodes_training"], snapshot["nodes_offline"]) == (
        1,
        1,
        1,
    )
    n1 = snapshot["nodes"][0]
    assert n1["node"] == "n1" and n1["updates"] == 1 and n1["last_seq"] == 7
    assert n1["staleness"] == 1 and n1["last_update_seconds_ago"] == 3.0
    assert (n1["accepted"], n1["rejected"], n1["last_verdict"]) == (1, 1, "stale")
    assert n1["evaluation"] == {"accuracy": 0.9, "loss": 0.3}
    assert snapshot["bad_messages"] == 1
    table = render(snapshot)
    assert "version 4" in table and "acc 0.900" in table and "n2" in table and "offline" in table


# ------------------------------------------------------------------ event log and report


def test_event_log_lines_and_a_torn_tail(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.update(AckMessage("n1", 1, True, 1), 0, 300)
    log.update(AckMessage("n2", 1, False, 1, reason=RejectReason.NON_FINITE), None, 300)
    log.write("model", version=1, applied=1, buffered=0)
    log.close()
    with (tmp_path / "events.jsonl").open("a") as handle:
        handle.write('{"ts": 1, "event": "upd')  # a crash mid-line
    events = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["update", "update", "model"]
    summary = summarize(events)
    assert summary["accepted"] == 1 and summary["rejected_by_reason"] == {"non_finite": 1}
    assert summary["staleness"] == {0: 1} and summary["per_node_rejected"] == {"n2": 1}


def test_report_draws_every_plot(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    for version in range(1, 6):
        for node in ("n1", "n2"):
            log.update(AckMessage(node, version, True, version), version % 3, 2800 + version)
        log.write("model", version=version, applied=2 * version, buffered=0)
    log.close()
    (tmp_path / "scores.csv").write_text(
        "version,seconds,accuracy,loss\n"
        + "".join(f"{v},{0.5 * v:.4f},{0.5 + 0.08 * v:.6f},1.0\n" for v in range(1, 6))
    )
    summary = report(tmp_path)
    names = sorted(Path(p).name for p in summary["plots"])
    assert names == sorted(
        [
            "report_accuracy_time.png",
            "report_accuracy_updates.png",
            "report_staleness.png",
            "report_bytes.png",
            "report_contributions.png",
        ]
    )
    assert all((tmp_path / n).stat().st_size > 5000 for n in names)
    assert summary["final_version"] == 5 and summary["accepted"] == 10


# ------------------------------------------------------------------ over a real broker


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.mark.broker
def test_daemon_metrics_event_log_and_status_view(mosquitto_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    core = AggregatorCore(task, BufferedAggregator(AggregationConfig.fedbuff(2), initial))
    port = free_port()
    settings = DaemonSettings(
        address, TOPICS, event_log=tmp_path / "events.jsonl", metrics_port=port
    )
    daemon = AggregatorDaemon(core, settings)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    daemon.client.wait_connected(10)
    daemon.client.wait_subscribed(10)
    # The status view's own pieces in-process, so the test knows when it is subscribed.
    parser = argparse.ArgumentParser()
    status_cli.configure_parser(parser)
    bus_flags = ["--host", address.host, "--port", str(address.port), "--fleet", TOPICS.fleet]
    watcher, view = status_cli._client(parser.parse_args(bus_flags))
    watcher.start()
    client = BusClient("obs-node", address, persistent_session=False)
    client.start()
    try:
        watcher.wait_connected(10)
        watcher.wait_subscribed(10)
        client.wait_connected(10)
        online = encode(NodeStatus("n1", NodeState.ONLINE, 0))
        client.publish(TOPICS.status("n1"), online, qos=1, retain=True)
        for seq, node in enumerate(("n1", "n2", "n1"), start=1):
            client.publish(TOPICS.update(node), _update(node, seq), qos=1)
        client.publish(TOPICS.update("n2"), encode(UpdateMessage("n2", 9, 7, 10, ())), qos=1)
        deadline = time.monotonic() + 10
        while core.counters.accepted + core.counters.rejected_total < 4:
            assert time.monotonic() < deadline, "the daemon did not decide the updates"
            time.sleep(0.05)
        time.sleep(0.3)
        metrics = _scrape(port)
        assert metrics["fedbus_updates_accepted_total"] == 3
        assert metrics['fedbus_updates_rejected_total{reason="future_base"}'] == 1
        assert metrics["fedbus_model_version"] == 1
        assert metrics["fedbus_update_staleness_count"] == 3
        assert metrics['fedbus_node_last_seen_timestamp_seconds{node="n2"}'] > 0
        status_cli._drain(watcher, view, time.monotonic() + 1.5)
        nodes = {n["node"]: n for n in view.snapshot(time.monotonic())["nodes"]}
        assert nodes["n1"]["state"] == "online" and nodes["n1"]["updates"] == 2
        assert nodes["n2"]["rejected"] == 1 and nodes["n2"]["last_verdict"] == "future_base"
        # The command as a script runs it: retained state arrives at once.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedbus.broker.cli",
                "status",
                "--once",
                "--json",
                "--wait",
                "1",
                *bus_flags,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        snapshot = json.loads(done.stdout)
        assert snapshot["aggregator"]["state"] == "running"
        assert snapshot["nodes_online"] == 1 and snapshot["nodes"][0]["node"] == "n1"
    finally:
        client.stop()
        watcher.stop()
        daemon.stopping.set()
        thread.join(10)
    events = read_events(tmp_path / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert kinds.count("update") == 4 and kinds.count("model") >= 2
    assert summarize(events)["rejected_by_reason"] == {"future_base": 1}


def test_status_histogram_stays_decodable_however_stale_updates_get() -> None:
    from collections import Counter

    from fedbus.aggregator.counters import Counters
    from fedbus.broker.codec import decode

    counters = Counters(staleness=Counter({s: 1 for s in range(1000)}))
    status = AggregatorStatus("running", 1000, "fedbuff", counters.as_dict())
    histogram = decode(encode(status), AggregatorStatus).counters["staleness_histogram"]
    assert len(histogram) == 129 and histogram["128+"] == 872 and histogram["127"] == 1
