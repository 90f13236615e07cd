"""10,000+ hostile payloads through a real Mosquitto at a real aggregator process.

The daemon must stay up, refuse every one with a counted reason (acking each
refusal on `ack/<node>`), leave the model bit for bit as it was, and keep its
memory bounded. tests/hostile.py makes the payloads; the first test checks,
without a broker, that the core refuses each of them, so the live test
checks the whole path rather than the generator.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from crash_harness import AggregatorProcess, wait_for
from hostile import ENROLLED, LAYOUT, NORM_BOUND, generate

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.broker.chunking import decode_chunk
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError, ProtocolError
from fedbus.broker.messages import AckMessage, AggregatorStatus, ModelMessage, TrainingTask
from fedbus.broker.topics import Channel, Topics

ITEMS = generate(seed=0)
#: More, different streams for the same daemon: memory after the last must not
#: have grown beyond the earlier high-water mark, as it would with a leak.
MORE_ITEMS = generate(seed=1, first_seq=10**9)
EVEN_MORE_ITEMS = generate(seed=2, first_seq=2 * 10**9)
AGGREGATOR_ARGS = (
    "--features",
    "64",
    "--classes",
    "10",
    "--allow-node",
    ENROLLED[0],
    "--allow-node",
    ENROLLED[1],
    "--max-update-norm",
    str(NORM_BOUND),
)


def test_generator_makes_ten_thousand_payloads_the_core_refuses_for_many_reasons() -> None:
    assert len(ITEMS) >= 10_000
    topics = Topics("fuzz")
    task = TrainingTask("digits-20", "softmax", LAYOUT)
    initial = {name: np.zeros(shape, np.float32) for name, shape in LAYOUT.items()}
    core = AggregatorCore(
        task,
        BufferedAggregator(AggregationConfig.fedbuff(10), initial),
        known_nodes=frozenset(ENROLLED),
        max_update_norm=NORM_BOUND,
    )
    for kind, level, payload in ITEMS:
        if kind == "bad_topic":
            with pytest.raises(ProtocolError):
                topics.parse(f"{topics.root}/update/{level}")
        elif kind == "chunk_garbage":
            with pytest.raises(CodecError):
                decode_chunk(payload)
        else:
            outcome = core.handle_update(level, payload)
            assert not outcome.ack.accepted and not outcome.ack.duplicate, (kind, outcome.ack)
    assert core.counters.accepted == 0 and core.aggregator.buffered == 0
    reasons = set(core.counters.rejected)
    assert reasons >= {
        "malformed",
        "unsupported_version",
        "node_mismatch",
        "unknown_node",
        "replay",
        "future_base",
        "bad_samples",
        "wrong_shape",
        "non_finite",
        "norm_exceeded",
    }, reasons


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _Watcher:
    """Latest retained status and model, and every ack, as the fleet sees them."""

    def __init__(self, address: BrokerAddress, topics: Topics) -> None:
        self.topics = topics
        self.status: AggregatorStatus | None = None
        self.model: ModelMessage | None = None
        self.acks: Counter[str] = Counter()
        self.client = BusClient("test-fuzz-watcher", address, persistent_session=False)
        self.client.subscribe(topics.aggregator_status)
        self.client.subscribe(topics.model)
        self.client.subscribe(topics.all_nodes(Channel.ACK))
        self.client.start()
        self.client.wait_connected(10)

    def poll(self, timeout: float = 0.05) -> None:
        received = self.client.receive(timeout)
        while received is not None:
            channel, _ = self.topics.parse(received.topic)
            if channel is Channel.AGGREGATOR_STATUS:
                self.status = decode(received.payload, AggregatorStatus)
            elif channel is Channel.MODEL:
                self.model = decode(received.payload, ModelMessage)
            elif channel is Channel.ACK:
                ack = decode(received.payload, AckMessage)
                self.acks["accepted" if ack.accepted else "rejected"] += 1
            received = self.client.receive(0)

    def refused(self) -> int:
        if self.status is None or self.status.state != "running":
            return -1
        counters = self.status.counters
        return int(counters["rejected"]) + int(counters["bad_topics"]) + int(counters["bad_chunks"])


def _model_digest(model: ModelMessage) -> str:
    return hashlib.sha256(b"".join(t.data for t in model.tensors)).hexdigest()


@pytest.mark.broker
def test_ten_thousand_hostile_payloads_are_refused_and_change_nothing(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    topics = Topics("fuzz")
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    aggregator = AggregatorProcess(
        address, topics, tmp_path / "aggregator", tmp_path / "aggregator.log", AGGREGATOR_ARGS
    ).start()
    watcher = _Watcher(address, topics)
    sender = BusClient(
        "test-fuzz-sender", BrokerAddress(address.host, address.port, chunk_limit=None)
    )
    sender.start()
    sender.wait_connected(10)
    try:
        wait_for(lambda: (watcher.poll(), watcher.model)[1] is not None, 30, "the first model")
        assert watcher.model is not None
        before = (watcher.model.version, _model_digest(watcher.model))
        assert aggregator.process is not None
        pid = aggregator.process.pid

        started = time.monotonic()
        rss = []
        sent = 0
        for stream in (ITEMS, MORE_ITEMS, EVEN_MORE_ITEMS):
            for _, level, payload in stream:
                sender.publish(f"{topics.root}/update/{level}", payload, qos=1)
            sent += len(stream)
            wait_for(
                lambda sent=sent: (watcher.poll(), watcher.refused())[1] >= sent,
                120,
                f"all {sent} payloads refused",
            )
            rss.append(_rss_bytes(pid))
        seconds = time.monotonic() - started
        assert aggregator.alive, "the daemon died of hostile input"
        # The acks of the last payloads may trail the status a little.
        streams = ITEMS + MORE_ITEMS + EVEN_MORE_ITEMS
        acked = sum(kind not in ("bad_topic", "chunk_garbage") for kind, _, _ in streams)
        wait_for(lambda: (watcher.poll(), watcher.acks["rejected"])[1] >= acked, 30, "acks")
    finally:
        sender.stop()
    assert watcher.status is not None
    counters = watcher.status.counters
    print(
        f"{sent} hostile payloads refused in {seconds:.1f} s; "
        f"RSS after each 10k stream {[round(r / 2**20, 1) for r in rss]} MiB; {counters}"
    )
    assert watcher.refused() == sent  # nothing uncounted, nothing counted twice
    assert counters["accepted"] == 0 and counters["applied"] == 0
    assert watcher.acks == Counter({"rejected": acked})
    # Memory is bounded by the limits (inbox, decode limits, one decision per node),
    # not by how much garbage arrives: after the first stream has set the
    # allocator's high-water mark (two streams, to let it settle), a third must
    # not add to it. A leak of even 500 bytes per payload would add 5 MiB here.
    assert rss[2] - rss[1] < 4 * 2**20, rss

    latest = BusClient("test-fuzz-late", address, persistent_session=False)
    latest.subscribe(topics.model)
    latest.start()
    try:
        retained = latest.receive(10)
    finally:
        latest.stop()
    assert retained is not None
    model = decode(retained.payload, ModelMessage)
    assert (model.version, _model_digest(model)) == before
    assert aggregator.stop() == 0
