"""The test proxy that breaks links: first against a plain echo server, then real mosquitto.

The echo tests pin the proxy's own behaviour (forwarding, cut, block,
shutdown) without a broker; the broker tests check that an MQTT client sees
what the proxy is meant to simulate: a dropped link, a partition, lost acks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from netproxy import LOOPBACK, TcpProxy

from fedbus.broker.client import BrokerAddress, BusClient, LastWill, Received
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.topics import Topics

TOPICS = Topics("proxytest")
WAIT_S = 10.0


def _eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# ---------------------------------------------------------------- echo server


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback server that echoes every byte back, one thread per connection."""
    server = socket.create_server((LOOPBACK, 0))
    server.settimeout(0.2)
    stopping = threading.Event()
    handlers: list[threading.Thread] = []

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(0.2)
            while not stopping.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                conn.sendall(data)

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            handler = threading.Thread(target=echo, args=(conn,), daemon=True)
            handlers.append(handler)
            handler.start()

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    yield int(server.getsockname()[1])
    stopping.set()
    acceptor.join(5)
    for handler in handlers:
        handler.join(5)
    server.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=2.0)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _is_closed(sock: socket.socket) -> bool:
    """True if the peer closed or reset `sock` (waits up to the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _turned_away(port: int) -> bool:
    """True if a new connection to `port` is closed or reset without an answer."""
    try:
        sock = _connect(port)
    except ConnectionError:  # the reset can beat the end of connect()
        return True
    with sock:
        return _is_closed(sock)


def test_forwards_both_ways_and_counts(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy, _connect(proxy.port) as sock:
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        assert proxy.bytes_upstream == len(payload)
        assert _eventually(lambda: proxy.bytes_downstream == len(payload))
        assert proxy.connections_accepted == 1
        assert proxy.active_connections == 1


def test_cut_resets_the_connection_and_accepts_new_ones(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        first = _connect(proxy.port)
        first.sendall(b"ping")
        assert _recv_exactly(first, 4) == b"ping"

        assert proxy.cut() == 1
        assert _is_closed(first)
        first.close()
        assert proxy.active_connections == 0

        with _connect(proxy.port) as second:
            second.sendall(b"again")
            assert _recv_exactly(second, 5) == b"again"
        assert proxy.connections_accepted == 2 and proxy.connections_cut == 1


def test_block_holds_existing_connections_and_refuses_new_ones(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy, _connect(proxy.port) as held:
        proxy.block()
        held.sendall(b"waits")
        held.settimeout(0.3)
        with pytest.raises(TimeoutError):
            held.recv(5)  # neither closed nor answered: a partition
        assert _turned_away(proxy.port)
        assert proxy.connections_refused == 1

        proxy.unblock()
        held.settimeout(2.0)
        assert _recv_exactly(held, 5) == b"waits"


def test_hold_downstream_buffers_the_answer_until_released(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy, _connect(proxy.port) as sock:
        proxy.hold_downstream()
        sock.sendall(b"question")
        assert _eventually(lambda: proxy.buffered_downstream == 8)  # it went up and came back
        assert proxy.bytes_upstream == 8 and proxy.bytes_downstream == 0

        proxy.release_downstream()
        assert _recv_exactly(sock, 8) == b"question"
        assert proxy.buffered_downstream == 0


def test_stop_closes_connections_and_ends_its_thread(echo_port: int) -> None:
    proxy = TcpProxy(echo_port)
    port = proxy.start()
    assert [t.name for t in threading.enumerate()].count(f"tcp-proxy-{port}") == 1
    sock = _connect(port)
    sock.sendall(b"x")
    assert _recv_exactly(sock, 1) == b"x"

    proxy.stop()
    proxy.stop()  # idempotent
    assert _is_closed(sock)
    sock.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tcp-proxy-")]
    with pytest.raises(OSError):
        _connect(port).close()


def test_unreachable_target_closes_the_client(echo_port: int) -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        dead_port = probe.getsockname()[1]  # bound, not listening: connections refused
        with TcpProxy(dead_port) as proxy:
            assert _turned_away(proxy.port)
            assert proxy.connections_refused == 1


# ---------------------------------------------------------------- real mosquitto


def _client(name: str, port: int, *, will: LastWill | None = None) -> BusClient:
    client = BusClient(
        f"proxytest-{name}",
        BrokerAddress(port=port, keepalive=30),
        persistent_session=False,
        will=will,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.2,
    )
    client.subscribe(TOPICS.everything, qos=1)
    client.start()
    client.wait_connected(WAIT_S)
    return client


def _next_on(client: BusClient, topic: str, timeout: float = WAIT_S) -> Received | None:
    """The next message on `topic` (others are skipped), or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        received = client.receive(timeout=left)
        if received is not None and received.topic == topic:
            return received
    return None


def _sync(client: BusClient, name: str) -> None:
    """Return once `client`'s subscription is live: its own probe came back to it."""
    probe = TOPICS.metrics(f"probe-{name}")
    client.publish(probe, b"probe", qos=1)
    assert _next_on(client, probe) is not None, f"{name} never received its own probe"


@pytest.fixture
def proxy(mosquitto_broker: ManagedBroker) -> Iterator[TcpProxy]:
    with TcpProxy(mosquitto_broker.port) as running:
        yield running


@pytest.fixture
def clients() -> Iterator[list[BusClient]]:
    started: list[BusClient] = []
    yield started
    for client in started:
        client.stop()


@pytest.mark.broker
def test_client_publishes_and_receives_through_the_proxy(
    mosquitto_broker: ManagedBroker, proxy: TcpProxy, clients: list[BusClient]
) -> None:
    node = _client("node", proxy.port)
    direct = _client("direct", mosquitto_broker.port)
    clients += [node, direct]
    _sync(node, "node")
    _sync(direct, "direct")

    node.publish(TOPICS.update("node"), b"delta", qos=1).wait_for_publish(WAIT_S)
    direct.publish(TOPICS.model, b"model v1", qos=1)

    update = _next_on(direct, TOPICS.update("node"))
    model = _next_on(node, TOPICS.model)
    assert update is not None and update.payload == b"delta"
    assert model is not None and model.payload == b"model v1"
    assert proxy.connections_accepted == 1
    assert proxy.bytes_upstream > len(b"delta") and proxy.bytes_downstream > len(b"model v1")


@pytest.mark.broker
def test_cut_drops_the_link_and_the_client_reconnects_through_the_proxy(
    mosquitto_broker: ManagedBroker, proxy: TcpProxy, clients: list[BusClient]
) -> None:
    will = LastWill(TOPICS.status("node"), b"offline", qos=1, retain=False)
    node = _client("node", proxy.port, will=will)
    direct = _client("direct", mosquitto_broker.port)
    clients += [node, direct]
    _sync(direct, "direct")
    assert node.connect_count == 1

    assert proxy.cut() == 1

    # The broker saw an abrupt loss, not a clean DISCONNECT: it sends the last will.
    status = _next_on(direct, TOPICS.status("node"))
    assert status is not None and status.payload == b"offline"
    assert _eventually(lambda: node.connect_count == 2 and node.connected.is_set())
    assert proxy.connections_accepted == 2
    _sync(node, "node")
    node.publish(TOPICS.update("node"), b"after reconnect", qos=1)
    update = _next_on(direct, TOPICS.update("node"))
    assert update is not None and update.payload == b"after reconnect"


@pytest.mark.broker
def test_hold_downstream_delivers_publishes_but_withholds_messages_and_acks(
    mosquitto_broker: ManagedBroker, proxy: TcpProxy, clients: list[BusClient]
) -> None:
    node = _client("node", proxy.port)
    direct = _client("direct", mosquitto_broker.port)
    clients += [node, direct]
    _sync(node, "node")
    _sync(direct, "direct")

    proxy.hold_downstream()
    direct.publish(TOPICS.model, b"model v2", qos=1)
    sent = node.publish(TOPICS.update("node"), b"delta", qos=1)

    update = _next_on(direct, TOPICS.update("node"))
    assert update is not None and update.payload == b"delta"  # the publish got through
    assert _next_on(node, TOPICS.model, timeout=0.5) is None  # the model did not
    assert not sent.is_published()  # nor the broker's PUBACK
    assert proxy.buffered_downstream > 0

    proxy.release_downstream()
    model = _next_on(node, TOPICS.model)
    assert model is not None and model.payload == b"model v2"
    sent.wait_for_publish(WAIT_S)
    assert sent.is_published()
    assert node.connect_count == 1  # held, never dropped


@pytest.mark.broker
def test_block_partitions_the_client_until_unblocked(
    mosquitto_broker: ManagedBroker, proxy: TcpProxy, clients: list[BusClient]
) -> None:
    node = _client("node", proxy.port)
    direct = _client("direct", mosquitto_broker.port)
    clients += [node, direct]
    _sync(node, "node")
    _sync(direct, "direct")

    proxy.block()
    direct.publish(TOPICS.model, b"model v3", qos=1)
    sent = node.publish(TOPICS.update("node"), b"delta", qos=1)
    assert _next_on(direct, TOPICS.update("node"), timeout=0.5) is None
    assert _next_on(node, TOPICS.model, timeout=0.1) is None
    assert _turned_away(proxy.port)

    proxy.unblock()
    update = _next_on(direct, TOPICS.update("node"))
    model = _next_on(node, TOPICS.model)
    assert update is not None and update.payload == b"delta"
    assert model is not None and model.payload == b"model v3"
    sent.wait_for_publish(WAIT_S)
    assert sent.is_published() and node.connect_count == 1
