"""Persistent sessions, presence and reconnect backoff of the bus client."""

from __future__ import annotations

import random
import time

import pytest
from netproxy import TcpProxy

from fedbus.broker.client import BrokerAddress, BusClient, LastWill, backoff_delay
from fedbus.broker.errors import BrokerError


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    rng = random.Random(0)
    draws = {
        attempt: [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(400)]
        for attempt in range(12)
    }
    for attempt, delays in draws.items():
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert all(0.5 <= d <= ceiling for d in delays)
    assert max(draws[0]) == 0.5  # the first retry is quick
    assert max(draws[5]) > 10  # grows ...
    assert max(draws[11]) <= 30.0  # ... up to the cap
    assert len({round(d, 3) for d in draws[8]}) > 300  # spread: no reconnect storm


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(BrokerError, match="protocol"):
        BusClient("x", BrokerAddress(), protocol="4")


def _connected(client_id: str, port: int, *filters: str, protocol: str = "5", **kw) -> BusClient:  # type: ignore[no-untyped-def]
    client = BusClient(client_id, BrokerAddress("127.0.0.1", port), protocol=protocol, **kw)
    for topic_filter in filters:
        client.subscribe(topic_filter)
    client.start()
    client.wait_connected(10)
    client.wait_subscribed(10)
    return client


@pytest.mark.broker
def test_wait_subscribed_means_the_next_publish_is_routed_here(mosquitto_broker) -> None:  # type: ignore[no-untyped-def]
    # Without waiting for the SUBACK, a message published by another client at
    # once can reach the broker before the subscription does and go nowhere.
    for attempt in range(20):
        topic = f"fedbus/sessions/suback/{attempt}"
        receiver = BusClient(
            f"test-suback-rx-{attempt}", BrokerAddress("127.0.0.1", mosquitto_broker.port)
        )
        sender = _connected(f"test-suback-tx-{attempt}", mosquitto_broker.port)
        try:
            receiver.subscribe(topic)
            receiver.start()
            receiver.wait_connected(10)
            receiver.wait_subscribed(10)
            sender.publish(topic, b"first").wait_for_publish(5)
            message = receiver.receive(5)
            assert message is not None and message.payload == b"first"
        finally:
            receiver.stop()
            sender.stop()


@pytest.mark.broker
def test_wait_subscribed_waits_for_the_suback_itself(mosquitto_broker) -> None:  # type: ignore[no-untyped-def]
    with TcpProxy(mosquitto_broker.port) as proxy:
        client = _connected("test-suback-held", proxy.port)
        try:
            proxy.hold_downstream()  # the broker's SUBACK is held back on the way
            client.subscribe("fedbus/sessions/held")
            with pytest.raises(BrokerError, match="not acknowledged"):
                client.wait_subscribed(0.5)
            proxy.release_downstream()
            client.wait_subscribed(10)
        finally:
            client.stop()


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_messages_sent_while_a_device_is_away_wait_in_its_session(
    mosquitto_broker,
    protocol: str,  # type: ignore[no-untyped-def]
) -> None:
    topic = f"fedbus/sessions/ack/dev-{protocol.replace('.', '')}"
    device = _connected(f"test-device-{protocol}", mosquitto_broker.port, topic, protocol=protocol)
    device.stop()  # away (clean disconnect: the session stays)
    sender = _connected(f"test-sender-{protocol}", mosquitto_broker.port, persistent_session=False)
    for i in range(5):
        sender.publish(topic, bytes([i])).wait_for_publish(5)
    sender.stop()

    back = BusClient(
        f"test-device-{protocol}",
        BrokerAddress("127.0.0.1", mosquitto_broker.port),
        protocol=protocol,
    )
    back.start()  # no subscribe call: the session still holds the subscription
    try:
        received = []
        deadline = time.monotonic() + 10
        while len(received) < 5 and time.monotonic() < deadline:
            message = back.receive(0.1)
            if message is not None:
                received.append(message.payload)
    finally:
        back.stop()
    assert received == [bytes([i]) for i in range(5)]


@pytest.mark.broker
def test_last_will_marks_a_device_offline_when_its_link_dies(mosquitto_broker) -> None:  # type: ignore[no-untyped-def]
    status = "fedbus/sessions/status/dev"
    watcher = _connected("test-watcher", mosquitto_broker.port, status, persistent_session=False)
    device = _connected(
        "test-dying-device",
        mosquitto_broker.port,
        will=LastWill(status, b"offline"),
        reconnect_min_delay=5.0,
    )
    device.publish(status, b"online", retain=True).wait_for_publish(5)
    try:
        seen = []
        deadline = time.monotonic() + 10
        device.drop_connection()  # no DISCONNECT: the broker must send the will
        while b"offline" not in seen and time.monotonic() < deadline:
            message = watcher.receive(0.1)
            if message is not None:
                seen.append(message.payload)
    finally:
        device.stop()
        watcher.stop()
    assert seen[0] == b"online" and b"offline" in seen
