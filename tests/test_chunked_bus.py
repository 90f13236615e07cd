"""Messages 10x over a broker's payload cap arrive whole, also across a dropped link.

Mosquitto runs with `message_size_limit` at the chunk limit, so a message
sent in one piece would be dropped (silently, for QoS 1 from 3.1.1 clients);
only the chunked path can carry it. The link cuts come from the tests' own
TCP proxy (tests/netproxy.py) on loopback.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from netproxy import TcpProxy

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.daemon import AggregatorDaemon, DaemonSettings
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.chunking import split_message
from fedbus.broker.client import BrokerAddress, BusClient, Received
from fedbus.broker.layouts import weight_shapes
from fedbus.broker.messages import TrainingTask
from fedbus.broker.topics import Topics, chunk_topic
from fedbus.node.agent import EdgeNode, NodeSettings
from fedbus.node.datasets import load_digits_task

pytestmark = pytest.mark.broker

LIMIT = 16 * 1024
TOPIC = "fedbus/chunks/update/n1"


@pytest.fixture
def capped_broker(broker_factory):  # type: ignore[no-untyped-def]
    return broker_factory(extra_lines=[f"message_size_limit {LIMIT}"])


@pytest.fixture
def clients() -> Iterator[list[BusClient]]:
    made: list[BusClient] = []
    yield made
    for client in made:
        client.stop()


def _client(made: list[BusClient], name: str, port: int, *filters: str) -> BusClient:
    address = BrokerAddress("127.0.0.1", port, chunk_limit=LIMIT)
    client = BusClient(
        f"test-chunks-{name}",
        address,
        persistent_session=True,
        reconnect_min_delay=0.1,
        reconnect_max_delay=0.5,
    )
    for topic_filter in filters:
        client.subscribe(topic_filter)
    client.start()
    client.wait_connected(10)
    client.wait_subscribed(10)  # or the first messages published may find no subscriber
    made.append(client)
    return client


def _receive_on(client: BusClient, topic: str, timeout: float) -> Received:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        received = client.receive(0.1)
        if received is not None and received.topic == topic:
            return received
    raise AssertionError(f"nothing arrived on {topic} within {timeout} s")


def test_unchunked_oversize_message_is_lost_which_is_why_chunking_exists(
    capped_broker, clients
) -> None:  # type: ignore[no-untyped-def]
    receiver = _client(clients, "rx0", capped_broker.port, TOPIC)
    raw = BusClient(
        "test-chunks-raw", BrokerAddress("127.0.0.1", capped_broker.port, chunk_limit=None)
    )
    clients.append(raw)
    raw.start()
    raw.wait_connected(10)
    raw.publish(TOPIC, os.urandom(10 * LIMIT))
    assert receiver.receive(1.5) is None


def test_message_ten_times_the_limit_arrives_intact(capped_broker, clients) -> None:  # type: ignore[no-untyped-def]
    receiver = _client(clients, "rx1", capped_broker.port, TOPIC)
    sender = _client(clients, "tx1", capped_broker.port)
    message = os.urandom(10 * LIMIT)
    sender.publish(TOPIC, message).wait_for_publish(10)
    received = _receive_on(receiver, TOPIC, 10)
    assert received.payload == message
    assert receiver.reassembler.counters.completed == 1


def test_transfer_survives_a_sender_link_cut_in_the_middle(capped_broker, clients) -> None:  # type: ignore[no-untyped-def]
    receiver = _client(clients, "rx2", capped_broker.port, TOPIC)
    message = os.urandom(10 * LIMIT + 123)
    chunks = split_message(message, LIMIT)
    half = len(chunks) // 2
    with TcpProxy(capped_broker.port) as proxy:
        sender = _client(clients, "tx2", proxy.port)
        for index in range(half):  # these reach the broker (PUBACKed)
            sender.publish(chunk_topic(TOPIC, index), chunks[index]).wait_for_publish(10)
        proxy.block()  # the rest leave the sender but hang in the dying link
        for index in range(half, len(chunks)):
            sender.publish(chunk_topic(TOPIC, index), chunks[index])
        time.sleep(0.2)
        proxy.cut()
        proxy.unblock()
        received = _receive_on(receiver, TOPIC, 20)
    assert received.payload == message
    assert sender.connect_count >= 2  # the second half went out on a new connection
    assert receiver.reassembler.counters.completed == 1


def test_transfer_survives_a_receiver_link_cut_in_the_middle(capped_broker, clients) -> None:  # type: ignore[no-untyped-def]
    message = os.urandom(10 * LIMIT + 7)
    chunks = split_message(message, LIMIT)
    with TcpProxy(capped_broker.port) as proxy:
        receiver = _client(clients, "rx3", proxy.port, TOPIC)
        # A sender that publishes the chunks itself, so the test can stop halfway.
        sender = _client(clients, "tx3", capped_broker.port)
        half = len(chunks) // 2
        for index in range(half):
            sender.publish(chunk_topic(TOPIC, index), chunks[index]).wait_for_publish(10)
        # Cut once the receiver holds the whole first half, so the test is about
        # partial transfers surviving a reconnect in the receiver.
        deadline = time.monotonic() + 10
        while receiver.reassembler.pending_chunks < half and time.monotonic() < deadline:
            assert receiver.receive(0.05) is None
        assert receiver.reassembler.pending_transfers == 1
        assert receiver.reassembler.pending_chunks == half
        proxy.cut()  # the receiver's link drops with half the message received
        deadline = time.monotonic() + 10
        while receiver.connect_count < 2 and time.monotonic() < deadline:
            assert receiver.receive(0.05) is None
        for index in range(half, len(chunks)):
            sender.publish(chunk_topic(TOPIC, index), chunks[index]).wait_for_publish(10)
        received = _receive_on(receiver, TOPIC, 20)
    assert received.payload == message
    assert receiver.connect_count >= 2
    assert receiver.reassembler.counters.completed == 1


def test_retained_chunked_message_reaches_a_late_joiner_and_shrinks_cleanly(
    capped_broker, clients
) -> None:  # type: ignore[no-untyped-def]
    topic = "fedbus/chunks/model"
    sender = _client(clients, "tx4", capped_broker.port)
    big, small = os.urandom(6 * LIMIT), os.urandom(2 * LIMIT)
    sender.publish(topic, big, retain=True).wait_for_publish(10)
    sender.publish(topic, small, retain=True).wait_for_publish(10)
    late = _client(clients, "late", capped_broker.port, topic)
    assert _receive_on(late, topic, 10).payload == small
    # The big message's extra retained chunks were deleted: nothing else arrives.
    assert late.receive(1.0) is None
    sender.publish(topic, b"whole", retain=True).wait_for_publish(10)
    later = _client(clients, "later", capped_broker.port, topic)
    assert _receive_on(later, topic, 10).payload == b"whole"
    assert later.receive(1.0) is None
    assert chunk_topic(topic, 0).startswith(topic)


def test_model_and_updates_travel_chunked_between_aggregator_and_nodes(
    broker_factory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    limit = 1024  # the 2.7 KB digits model and updates need 3 chunks each
    broker = broker_factory(extra_lines=[f"message_size_limit {limit}"])
    address = BrokerAddress("127.0.0.1", broker.port, chunk_limit=limit)
    topics = Topics("chunked")
    shapes = weight_shapes("softmax", 64, 10)
    core = AggregatorCore(
        TrainingTask("digits-20", "softmax", shapes),
        BufferedAggregator(
            AggregationConfig.fedbuff(2),
            {name: np.zeros(shape, np.float32) for name, shape in shapes.items()},
        ),
    )
    store = AggregatorStore(tmp_path / "aggregator")
    store.recover(core)
    daemon = AggregatorDaemon(core, DaemonSettings(address, topics), store)
    task = load_digits_task()
    nodes = [
        EdgeNode(
            NodeSettings(f"n{i}", address, topics, node_index=i, state_dir=tmp_path / f"n{i}"),
            task.X_train[i::2],
            task.y_train[i::2],
        )
        for i in range(2)
    ]
    threads = [threading.Thread(target=daemon.run, daemon=True)]
    threads += [threading.Thread(target=node.run, daemon=True) for node in nodes]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            core.version < 3 or sum(node.progress.accepted for node in nodes) < 6
        ):
            time.sleep(0.05)
        assert core.version >= 3, "no model steps from chunked updates"
    finally:
        for node in nodes:
            node.stopping.set()
        daemon.stopping.set()
        for thread in threads:
            thread.join(10)
    assert core.counters.rejected_total == 0
    assert daemon.client.reassembler.counters.completed >= 6
    # K = 2: three steps took six accepted updates, from both nodes (which share
    # them as their training speed allows), and every node took chunked models in.
    assert sum(node.progress.accepted for node in nodes) >= 6
    assert all(node.progress.accepted >= 1 for node in nodes)
    assert all(node.client.reassembler.counters.completed >= 1 for node in nodes)
