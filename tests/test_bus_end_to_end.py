"""The first end-to-end slice over a real Mosquitto: aggregator, nodes, hostile updates.

Every test here starts `mosquitto` from the repo's config on a free port and
talks to it with real paho clients; the aggregator daemon runs on a thread
of the test process with exactly the code `fedbus aggregator` runs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.daemon import AggregatorDaemon, DaemonSettings
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.client import BrokerAddress, BusClient, Received
from fedbus.broker.codec import decode, encode
from fedbus.broker.layouts import weight_shapes
from fedbus.broker.messages import (
    AckMessage,
    ModelMessage,
    RejectReason,
    TrainingTask,
    UpdateMessage,
)
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Topics
from fedbus.node.agent import EdgeNode, NodeSettings
from fedbus.node.datasets import load_digits_task
from fedbus.node.partition import iid_partition

pytestmark = pytest.mark.broker

TOPICS = Topics("e2e")
SHAPES = weight_shapes("softmax", 64, 10)


def _wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RunningAggregator:
    def __init__(self, address: BrokerAddress, config: AggregationConfig, state_dir: Path) -> None:
        task = TrainingTask("digits-20", "softmax", SHAPES)
        initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
        self.core = AggregatorCore(task, BufferedAggregator(config, initial))
        store = AggregatorStore(state_dir)
        store.recover(self.core)
        self.daemon = AggregatorDaemon(self.core, DaemonSettings(address, TOPICS), store)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def model_digest(self) -> str:
        weights = self.core.aggregator.weights
        return hashlib.sha256(b"".join(w.tobytes() for w in weights.values())).hexdigest()


@pytest.fixture
def address(mosquitto_broker) -> BrokerAddress:  # type: ignore[no-untyped-def]
    return BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)


@pytest.fixture
def start_aggregator(address: BrokerAddress, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    running: list[RunningAggregator] = []

    def start(config: AggregationConfig) -> RunningAggregator:
        aggregator = RunningAggregator(address, config, tmp_path / f"state-{len(running)}")
        aggregator.thread.start()
        _wait_for(lambda: aggregator.core.counters.models_published >= 1, what="first model")
        running.append(aggregator)
        return aggregator

    yield start
    for aggregator in running:
        aggregator.daemon.stopping.set()
        aggregator.thread.join(10)
        assert not aggregator.thread.is_alive(), "aggregator did not stop on request"


def _client(address: BrokerAddress, name: str, *filters: str) -> BusClient:
    client = BusClient(f"test-{name}", address, persistent_session=False)
    for topic_filter in filters:
        client.subscribe(topic_filter)
    client.start()
    client.wait_connected(10)
    return client


def _next(client: BusClient, timeout: float = 10.0) -> Received:
    received = client.receive(timeout)
    assert received is not None, "no message arrived"
    return received


def test_nodes_and_aggregator_train_end_to_end(address: BrokerAddress, start_aggregator) -> None:  # type: ignore[no-untyped-def]
    aggregator = start_aggregator(AggregationConfig.fedbuff(buffer_size=3))
    task = load_digits_task()
    parts = iid_partition(len(task.y_train), 3, seed=0)
    nodes = [
        EdgeNode(
            NodeSettings(f"n{i}", address, TOPICS, node_index=i),
            task.X_train[idx],
            task.y_train[idx],
        )
        for i, idx in enumerate(parts)
    ]
    threads = [threading.Thread(target=n.run, daemon=True) for n in nodes]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: aggregator.core.version >= 5, timeout=60, what="five model versions")
    finally:
        for node in nodes:
            node.stopping.set()
        for thread in threads:
            thread.join(10)
        aggregator.daemon.stopping.set()
        aggregator.thread.join(10)
    # Five steps of K = 3; each node took part (acks still in flight at the stop
    # may be missing from a node's own count, never from the aggregator's).
    assert aggregator.core.aggregator.applied_updates >= 15
    assert aggregator.core.counters.accepted >= 15
    assert all(node.progress.accepted >= 3 for node in nodes), [n.progress for n in nodes]
    assert aggregator.core.counters.rejected_total == 0
    # The aggregator's last model, retained on the bus, classifies held-out digits.
    watcher = _client(address, "watcher", TOPICS.model)
    model = decode(_next(watcher).payload, ModelMessage)
    watcher.stop()
    assert model.version == aggregator.core.version
    nodes[0].hold_model(model)
    accuracy = float(np.mean(nodes[0].predict(task.X_test) == task.y_test))
    assert accuracy > 0.85, accuracy


def test_late_joiner_gets_the_retained_model_at_once(
    address: BrokerAddress, start_aggregator
) -> None:  # type: ignore[no-untyped-def]
    aggregator = start_aggregator(AggregationConfig.fedasync(alpha=0.5))
    sender = _client(address, "sender", TOPICS.ack("n1"))
    delta = {name: np.full(shape, 0.01, np.float32) for name, shape in SHAPES.items()}
    sender.publish(
        TOPICS.update("n1"), encode(UpdateMessage("n1", 1, 0, 10, encode_weights(delta)))
    )
    assert decode(_next(sender).payload, AckMessage).accepted
    sender.stop()
    _wait_for(lambda: aggregator.core.version == 1, what="version 1")

    late = _client(address, "late", TOPICS.model)
    received = _next(late, timeout=5)
    late.stop()
    model = decode(received.payload, ModelMessage)
    assert received.retain and model.version == 1
    np.testing.assert_allclose(model.tensors[0].to_array(), 0.005)


def _nan_update() -> bytes:
    delta = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    delta["W"][3, 4] = np.nan
    return encode(UpdateMessage("n1", 2, 0, 10, encode_weights(delta)))


def _wrong_shape_update() -> bytes:
    delta = {"W": np.zeros((10, 64), np.float32), "b": np.zeros(10, np.float32)}
    return encode(UpdateMessage("n1", 3, 0, 10, encode_weights(delta)))


def test_hostile_updates_are_rejected_with_reasons_and_change_nothing(
    address: BrokerAddress,
    start_aggregator,  # type: ignore[no-untyped-def]
) -> None:
    aggregator = start_aggregator(AggregationConfig.fedasync(alpha=0.5))
    watcher = _client(address, "watcher", TOPICS.model)
    retained_before = _next(watcher).payload
    digest_before = aggregator.model_digest()
    node = _client(address, "hostile", TOPICS.ack("n1"))
    cases = [
        (b"\x82\xa1v\x01\xa4type\xc1\xff not msgpack", RejectReason.MALFORMED),
        (_nan_update(), RejectReason.NON_FINITE),
        (_wrong_shape_update(), RejectReason.WRONG_SHAPE),
    ]
    for payload, reason in cases:
        node.publish(TOPICS.update("n1"), payload)
        ack = decode(_next(node).payload, AckMessage)
        assert not ack.accepted and ack.reason is reason, ack
        assert ack.version == 0 and ack.detail
    assert aggregator.model_digest() == digest_before
    assert aggregator.core.version == 0
    assert dict(aggregator.core.counters.rejected) == {
        "malformed": 1,
        "non_finite": 1,
        "wrong_shape": 1,
    }
    assert watcher.receive(0.3) is None, "a rejected update must not publish a model"
    assert aggregator.thread.is_alive()

    # Still serving: a valid update afterwards is accepted and applied.
    delta = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    node.publish(TOPICS.update("n1"), encode(UpdateMessage("n1", 4, 0, 10, encode_weights(delta))))
    assert decode(_next(node).payload, AckMessage).accepted
    fresh = decode(_next(watcher).payload, ModelMessage)
    assert fresh.version == 1
    assert retained_before != encode(fresh)
    node.stop()
    watcher.stop()
