"""Record and replay over a real Mosquitto, and the determinism claim they rest on.

Claim: aggregation is a pure function of the ordered stream of updates, so
replaying a recorded run into a fresh aggregator with the recorded arguments
reproduces every model version of the run bit for bit. The recordings in
tests/data/ come from real runs (tests/data/make_recordings.py): mosquitto,
`python -m fedbus.aggregator` and a simulated fleet of 5 nodes.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedbus.broker.chunking import DEFAULT_CHUNK_LIMIT
from fedbus.broker.client import BrokerAddress, BusClient, Received
from fedbus.broker.codec import decode
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.messages import AggregatorStatus, ModelMessage
from fedbus.broker.recording import (
    RecordedMessage,
    RecordingHeader,
    RecordingWriter,
    read_recording,
)
from fedbus.broker.topics import Channel, Topics

pytestmark = pytest.mark.broker

DATA = Path(__file__).resolve().parent / "data"
RECORDINGS = sorted(DATA.glob("*.fbrec"))
CLI = [sys.executable, "-m", "fedbus.broker.cli"]


def _bus(broker: ManagedBroker, fleet: str) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet]


def _receive_until(client: BusClient, done, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Feed received messages to `done` until it returns True."""
    deadline = time.monotonic() + timeout
    while True:
        received = client.receive(max(0.0, min(0.2, deadline - time.monotonic())))
        if received is not None and done(received):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Run:
    """What an aggregator published during a run, as the tests compare it."""

    #: Model payloads by version (a version published twice is the same model).
    models: dict[int, bytes] = field(default_factory=dict)
    #: Every ack in publication order, as (node, payload).
    acks: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: list[AggregatorStatus] = field(default_factory=list)

    def take(self, topics: Topics, topic: str, payload: bytes) -> None:
        channel, node = topics.parse(topic)
        if channel is Channel.MODEL:
            self.models[decode(payload, ModelMessage).version] = payload
        elif channel is Channel.ACK and node is not None:
            self.acks.append((node, payload))
        elif channel is Channel.AGGREGATOR_STATUS:
            self.statuses.append(decode(payload, AggregatorStatus))

    @property
    def stopped(self) -> bool:
        return bool(self.statuses) and self.statuses[-1].state == "stopped"


def _recorded_run(path: Path) -> tuple[RecordingHeader, Run]:
    header, records = read_recording(path)
    topics = Topics(header.fleet)
    run = Run()
    for record in records:
        run.take(topics, record.topic, record.payload)
    assert run.models and run.acks and run.stopped
    return header, run


def test_the_checked_in_recordings_are_small() -> None:
    assert len(RECORDINGS) >= 2
    assert sum(p.stat().st_size for p in RECORDINGS) < 1 << 20


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_replay_into_a_fresh_aggregator_reproduces_every_model_bit_for_bit(
    path: Path,
    mosquitto_broker: ManagedBroker,
    tmp_path: Path,
) -> None:
    # Prepare: the recorded run, a fresh aggregator with its arguments on another fleet.
    header, recorded = _recorded_run(path)
    final = max(recorded.models)
    topics = Topics("replayed")
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    watcher = BusClient("test-replay-watcher", address, persistent_session=False)
    for topic_filter in (topics.model, topics.aggregator_status, topics.all_nodes(Channel.ACK)):
        watcher.subscribe(topic_filter)
    watcher.start()
    watcher.wait_connected(10)
    agg_log = (tmp_path / "aggregator.log").open("w")
    aggregator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedbus.aggregator",
            *shlex.split(header.meta["aggregator.args"]),
            *_bus(mosquitto_broker, topics.fleet),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stderr=agg_log,
    )
    replayed = Run()

    def until(condition):  # type: ignore[no-untyped-def]
        def take(received: Received) -> bool:
            replayed.take(topics, received.topic, received.payload)
            return bool(condition())

        return take

    try:
        _receive_until(watcher, until(lambda: 0 in replayed.models), 60, "the first model")

        # Execute: replay what the nodes sent, as fast as possible, through the real CLI.
        result = subprocess.run(
            [*CLI, "replay", str(path), "--fast", *_bus(mosquitto_broker, topics.fleet)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # Every update decided (one ack each) and the final model out; then stop.
        _receive_until(
            watcher,
            until(lambda: final in replayed.models and len(replayed.acks) >= len(recorded.acks)),
            60,
            f"model version {final} and {len(recorded.acks)} acks",
        )
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(30) == 0
        _receive_until(watcher, until(lambda: replayed.stopped), 10, "its last status")
    finally:
        watcher.stop()
        if aggregator.poll() is None:
            aggregator.kill()
            aggregator.wait()
        agg_log.close()

    # Assert: the same models bit for bit, the same decisions in the same order.
    # The daemon publishes one model per batch of messages it decides, and a fast
    # replay arrives in bigger batches than the live run did, so it may skip
    # intermediate versions; the final one always goes out.
    assert final in replayed.models and set(replayed.models) <= set(recorded.models)
    for version in sorted(replayed.models):
        differences = _tensor_differences(
            decode(recorded.models[version], ModelMessage),
            decode(replayed.models[version], ModelMessage),
        )
        assert not differences, f"model version {version}: {'; '.join(differences)}"
        assert replayed.models[version] == recorded.models[version]
    assert replayed.acks == recorded.acks
    assert replayed.statuses[-1].version == final
    recorded_counters = _decisions(recorded.statuses[-1])
    replayed_counters = _decisions(replayed.statuses[-1])
    # Counters added to the status after a recording was made are not in it.
    assert {k: replayed_counters.get(k) for k in recorded_counters} == recorded_counters


def _tensor_differences(want: ModelMessage, got: ModelMessage) -> list[str]:
    """What differs between two models' tensors, bit for bit; empty when identical."""
    if [(t.name, t.shape) for t in got.tensors] != [(t.name, t.shape) for t in want.tensors]:
        return ["different tensor names or shapes"]
    differences = []
    for w, g in zip(want.tensors, got.tensors, strict=True):
        if w.data != g.data:
            a, b = w.to_array(), g.to_array()
            unequal = a.view(np.uint32) != b.view(np.uint32)
            differences.append(
                f"{w.name}: {int(unequal.sum())} of {a.size} elements differ, "
                f"max |diff| {float(np.max(np.abs(a - b))):.3g}"
            )
    return differences


def _decisions(status: AggregatorStatus) -> dict[str, object]:
    """Counters that follow from the stream alone (not from how it was batched)."""
    per_publish = {"models_published", "bytes_out"}
    return {k: v for k, v in status.counters.items() if k not in per_publish}


def test_record_then_replay_keeps_order_topics_qos_retain_and_payloads(
    broker_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    # Prepare: a retained message before the recorder starts, then live traffic.
    source = broker_factory()
    topics = Topics("live")
    address = BrokerAddress(source.host, source.port)
    publisher = BusClient("test-record-publisher", address, persistent_session=False)
    publisher.start()
    publisher.wait_connected(10)
    publisher.publish(topics.status("n0"), b"\x85old", qos=1, retain=True).wait_for_publish(5)
    path = tmp_path / "live.fbrec"
    recorder = subprocess.Popen(
        [*CLI, "record", str(path), "--count", "6", *_bus(source, topics.fleet)],
        stderr=subprocess.PIPE,
        text=True,
    )
    live = [  # topic, payload, qos, retain
        (topics.update("n1"), b"u1", 1, False),
        (topics.metrics("n1"), b"m1", 0, False),
        (topics.status("n2"), b"s2", 1, True),
        # Over the bus's chunk limit: it travels as chunks, is recorded whole and
        # travels as chunks again on replay.
        (topics.update("n2"), b"u2" * 150_000, 1, False),
        (topics.model, b"model", 1, False),
    ]
    assert len(live[3][1]) > DEFAULT_CHUNK_LIMIT
    try:
        deadline = time.monotonic() + 30
        while not path.exists() or path.stat().st_size < 20:
            assert time.monotonic() < deadline and recorder.poll() is None
            time.sleep(0.02)
        time.sleep(0.2)  # the header is written once subscribed; settle anyway
        for topic, payload, qos, retain in live:
            publisher.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
        # Execute: --count 6 stops the recorder after the retained message and the five.
        assert recorder.wait(30) == 0, recorder.stderr.read() if recorder.stderr else ""
    finally:
        publisher.stop()
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()

    header, records = read_recording(path)
    assert header.fleet == topics.fleet and header.filters == (topics.everything,)
    assert [(r.topic, r.payload, r.qos, r.retain) for r in records] == [
        (topics.status("n0"), b"\x85old", 1, True),
        *live,  # the live retained status too: retain as published
    ]
    assert [r.t_ns for r in records] == sorted(r.t_ns for r in records)

    # Replay everything into another broker, rewritten to another fleet.
    target = broker_factory()
    moved = Topics("moved")
    listener = BusClient(
        "test-replay-listener", BrokerAddress(target.host, target.port), persistent_session=False
    )
    listener.subscribe(moved.everything, qos=2)
    listener.start()
    listener.wait_connected(10)
    try:
        result = subprocess.run(
            [*CLI, "replay", str(path), "--fast", "--channels", "all"] + _bus(target, moved.fleet),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        got = _collect(listener, 6)
    finally:
        listener.stop()
    # A plain live subscriber sees every message in order (the broker clears retain)...
    assert [(r.topic, r.payload, r.qos) for r in got] == [
        (moved.root + r.topic[len(topics.root) :], r.payload, r.qos) for r in records
    ]
    # ...and the two messages recorded as retained are retained again.
    late = BusClient("test-late-joiner", listener.address, persistent_session=False)
    late.subscribe(moved.everything)
    late.start()
    try:
        late.wait_connected(10)
        retained = sorted(_collect(late, 2), key=lambda r: r.topic)
        assert late.receive(0.3) is None
    finally:
        late.stop()
    assert [(r.topic, r.payload, r.retain) for r in retained] == [
        (moved.status("n0"), b"\x85old", True),
        (moved.status("n2"), b"s2", True),
    ]


def _collect(client: BusClient, count: int) -> list[Received]:
    got: list[Received] = []

    def take(received: Received) -> bool:
        got.append(received)
        return len(got) == count

    _receive_until(client, take, 10, f"{count} messages")
    return got


def _synthetic(path: Path, fleet: Topics, gaps_s: list[float]) -> None:
    with path.open("wb") as out:
        writer = RecordingWriter(out, RecordingHeader(fleet.fleet, time.time()))
        t = 0.0
        for i, gap in enumerate(gaps_s):
            t += gap
            writer.write(RecordedMessage(int(t * 1e9), fleet.update(f"n{i}"), 1, False, b"x"))


def _arrival_span(broker: ManagedBroker, path: Path, fleet: Topics, *flags: str) -> float:
    listener = BusClient(
        "test-timing-listener", BrokerAddress(broker.host, broker.port), persistent_session=False
    )
    listener.subscribe(fleet.all_nodes(Channel.UPDATE))
    listener.start()
    listener.wait_connected(10)
    arrivals: list[float] = []
    # Taken from the inbox while the replay runs, so dequeue time is arrival time.
    replay = subprocess.Popen(
        [*CLI, "replay", str(path), *flags, "--host", broker.host, "--port", str(broker.port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def note(received: Received) -> bool:
            arrivals.append(time.monotonic())
            return len(arrivals) == 3

        _receive_until(listener, note, 20, "three messages")
        assert replay.wait(20) == 0, replay.stderr.read() if replay.stderr else ""
    finally:
        listener.stop()
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    return arrivals[-1] - arrivals[0]


def test_replay_keeps_the_recorded_timing_scaled_by_speed(
    mosquitto_broker: ManagedBroker, tmp_path: Path
) -> None:
    fleet = Topics("timing")
    path = tmp_path / "timed.fbrec"
    # A long silence before the first message is not waited out: timing counts from it.
    _synthetic(path, fleet, [20.0, 0.6, 0.6])

    started = time.monotonic()
    span = _arrival_span(mosquitto_broker, path, fleet, "--speed", "2")
    assert 0.5 <= span < 1.2 and time.monotonic() - started < 8
    assert _arrival_span(mosquitto_broker, path, fleet, "--fast") < 0.3


def test_record_stops_after_its_duration_with_a_readable_file(
    mosquitto_broker: ManagedBroker, tmp_path: Path
) -> None:
    path = tmp_path / "quiet.fbrec"
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "record", str(path), "--duration", "0.5", "--channels", "update,model"]
        + ["--meta", "why=test", *_bus(mosquitto_broker, "quiet")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 0.5
    header, records = read_recording(path)
    topics = Topics("quiet")
    assert records == [] and dict(header.meta) == {"why": "test"}
    assert header.filters == (topics.model, topics.all_nodes(Channel.UPDATE))


def test_record_exits_1_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "record", str(tmp_path / "none.fbrec"), "--port", "1", "--connect-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and not (tmp_path / "none.fbrec").exists()
