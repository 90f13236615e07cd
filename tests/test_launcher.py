"""The managed mosquitto: config derivation (pure) and real broker runs."""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedbus.broker.errors import BrokerError, ConfigError
from fedbus.broker.launcher import ManagedBroker, free_port
from fedbus.broker.mosquitto_config import derive_config

REPO_CONFIG = Path(__file__).resolve().parents[1] / "mosquitto.conf"
BrokerFactory = Callable[..., ManagedBroker]
TIMEOUT_S = 5.0


def _options(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# --- derive_config: pure, no broker -----------------------------------------

BASE = """\
# comment kept
per_listener_settings false
listener 1883 127.0.0.1
allow_anonymous true
persistence true
persistence_location /var/lib/mosquitto/
pid_file /run/mosquitto.pid
log_dest file /var/log/mosquitto/mosquitto.log
log_dest stdout
log_dest syslog
log_type error
log_type warning
message_size_limit 16777216
"""


def test_derive_config_replaces_listener() -> None:
    text = derive_config(BASE, port=41234, host="127.0.0.2", data_dir=Path("/tmp/run"))

    listeners = [line for line in _options(text) if line.startswith("listener")]
    assert listeners == ["listener 41234 127.0.0.2"]


def test_derive_config_sets_persistence_dir_with_trailing_slash() -> None:
    text = derive_config(BASE, port=1, host="127.0.0.1", data_dir=Path("/tmp/run"))

    locations = [line for line in _options(text) if line.startswith("persistence_location")]
    assert locations == ["persistence_location /tmp/run/"]


def test_derive_config_adds_persistence_dir_and_listener_when_missing() -> None:
    text = derive_config("persistence true\n", port=5, host="::1", data_dir=Path("/d/"))

    assert "persistence_location /d/" in _options(text)
    assert "listener 5 ::1" in _options(text)


def test_derive_config_sends_logs_to_stderr_and_drops_pid_file() -> None:
    text = derive_config(BASE, port=1, host="127.0.0.1", data_dir=Path("/tmp/run"))

    log_dests = [line for line in _options(text) if line.startswith("log_dest")]
    assert sorted(log_dests) == ["log_dest stderr", "log_dest syslog"]
    assert not any(line.startswith("pid_file") for line in _options(text))


def test_derive_config_keeps_every_other_setting() -> None:
    text = derive_config(BASE, port=1, host="127.0.0.1", data_dir=Path("/tmp/run"))

    for line in (
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence true",
        "log_type error",
        "log_type warning",
        "message_size_limit 16777216",
    ):
        assert line in _options(text)
    assert "# comment kept" in text.splitlines()


def test_derive_config_keeps_the_repo_config_settings() -> None:
    base = REPO_CONFIG.read_text()
    managed = ("listener", "persistence_location", "log_dest")

    text = derive_config(base, port=2, host="127.0.0.1", data_dir=Path("/tmp/run"))

    kept = [line for line in _options(base) if not line.startswith(managed)]
    assert kept, "the repo's mosquitto.conf should not be empty"
    assert [line for line in _options(text) if not line.startswith(managed)] == kept


def test_derive_config_appends_extra_lines_last() -> None:
    extra = ["password_file /tmp/run/passwd", "log_type notice"]

    text = derive_config(BASE, port=1, host="127.0.0.1", data_dir=Path("/r"), extra_lines=extra)

    assert _options(text)[-2:] == extra


def test_derive_config_extra_line_replaces_single_valued_option() -> None:
    extra = ["allow_anonymous false", "message_size_limit 1000", "log_type notice"]

    text = derive_config(BASE, port=1, host="127.0.0.1", data_dir=Path("/r"), extra_lines=extra)

    options = _options(text)
    assert "allow_anonymous true" not in options
    assert "message_size_limit 16777216" not in options
    assert {"log_type error", "log_type warning", "log_type notice"} <= set(options)


@pytest.mark.parametrize(
    ("base", "kwargs"),
    [
        ("listener 1883\nlistener 9001\nprotocol websockets\n", {}),
        (BASE, {"port": 0}),
        (BASE, {"port": 65536}),
        (BASE, {"host": "127.0.0.1 8883"}),
        (BASE, {"extra_lines": ["persistence_location /elsewhere/"]}),
        (BASE, {"extra_lines": ["a 1\nb 2"]}),
    ],
)
def test_derive_config_rejects_what_it_cannot_honour(base: str, kwargs: dict) -> None:
    args = {"port": 1883, "host": "127.0.0.1", "data_dir": Path("/r"), **kwargs}

    with pytest.raises(ConfigError):
        derive_config(base, **args)


def test_derive_config_rejects_a_string_as_extra_lines() -> None:
    with pytest.raises(TypeError):
        derive_config(BASE, port=1, host="h", data_dir=Path("/r"), extra_lines="user x")


# --- real broker --------------------------------------------------------------


class _Client:
    """A paho v2 client on its own network thread, collecting messages."""

    def __init__(self, broker: ManagedBroker) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self.mqtt = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.mqtt.on_connect = lambda client, userdata, flags, reason, props: self._connected.set()
        self.mqtt.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.loop_start()
        assert self._connected.wait(TIMEOUT_S), "client did not connect"

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.mqtt.on_subscribe = lambda *args: done.set()
        self.mqtt.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), "no PUBACK"

    def next_message(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def _publish_retained(broker: ManagedBroker, topic: str, payload: bytes) -> None:
    publisher = _Client(broker)
    publisher.publish(topic, payload, retain=True)
    publisher.close()


def _read_retained(broker: ManagedBroker, topic: str) -> bytes:
    reader = _Client(broker)
    try:
        reader.subscribe(topic)
        message = reader.next_message()
        assert message.retain
        return bytes(message.payload)
    finally:
        reader.close()


@pytest.mark.broker
def test_retained_qos1_message_reaches_a_second_client(mosquitto_broker: ManagedBroker) -> None:
    _publish_retained(mosquitto_broker, "fedbus/test/model", b"version 1")

    assert _read_retained(mosquitto_broker, "fedbus/test/model") == b"version 1"


@pytest.mark.broker
def test_two_brokers_run_side_by_side_on_different_ports(broker_factory: BrokerFactory) -> None:
    first = broker_factory()
    second = broker_factory()

    assert first.port != second.port
    assert first.data_dir != second.data_dir
    assert first.running and second.running


@pytest.mark.broker
def test_stop_ends_the_process_and_is_idempotent(mosquitto_broker: ManagedBroker) -> None:
    pid = mosquitto_broker.pid
    data_dir = mosquitto_broker.data_dir
    assert pid is not None

    mosquitto_broker.stop()
    mosquitto_broker.stop()

    assert mosquitto_broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not data_dir.exists(), "a temporary data dir is removed on stop"
    with pytest.raises(OSError):
        socket.create_connection((mosquitto_broker.host, mosquitto_broker.port), timeout=1)


@pytest.mark.broker
def test_kill_ends_the_process_but_keeps_the_data_dir(mosquitto_broker: ManagedBroker) -> None:
    pid = mosquitto_broker.pid
    assert pid is not None

    mosquitto_broker.kill()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert mosquitto_broker.data_dir.is_dir()


@pytest.mark.broker
def test_restart_keeps_port_and_retained_message(mosquitto_broker: ManagedBroker) -> None:
    port = mosquitto_broker.port
    _publish_retained(mosquitto_broker, "fedbus/test/model", b"survives")

    mosquitto_broker.restart()

    assert mosquitto_broker.port == port
    assert (mosquitto_broker.data_dir / "mosquitto.db").is_file()
    assert _read_retained(mosquitto_broker, "fedbus/test/model") == b"survives"


@pytest.mark.broker
def test_stop_and_start_on_a_given_data_dir_keeps_retained_message(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(data_dir=tmp_path)
    _publish_retained(broker, "fedbus/test/model", b"on disk")

    broker.stop()
    broker.start()

    assert tmp_path.is_dir(), "a caller's data dir is never removed"
    assert _read_retained(broker, "fedbus/test/model") == b"on disk"


@pytest.mark.broker
def test_publish_above_message_size_limit_is_dropped(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(extra_lines=["message_size_limit 1000"])
    subscriber = _Client(broker)
    subscriber.subscribe("fedbus/test/update/#")
    publisher = _Client(broker)

    # mosquitto 2.0 still PUBACKs the oversize QoS 1 publish of an MQTT 3.1.1
    # client: the sender cannot tell that it was dropped.
    publisher.publish("fedbus/test/update/big", b"x" * 2000)
    publisher.publish("fedbus/test/update/small", b"y" * 10)

    # Delivery to one subscriber keeps publish order, so had the big one been
    # forwarded it would arrive first.
    assert subscriber.next_message().topic == "fedbus/test/update/small"
    assert subscriber.messages.empty()
    publisher.close()
    subscriber.close()


@pytest.mark.broker
def test_a_config_mosquitto_rejects_fails_fast_with_its_log(broker_factory: BrokerFactory) -> None:
    with pytest.raises(BrokerError, match="no_such_option"):
        broker_factory(extra_lines=["no_such_option 1"])


@pytest.mark.broker
def test_a_taken_fixed_port_is_reported(broker_factory: BrokerFactory) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        with pytest.raises(BrokerError, match="already in use"):
            broker_factory(port=port)


def test_missing_config_is_a_config_error(tmp_path: Path) -> None:
    broker = ManagedBroker(tmp_path / "absent.conf", port=free_port())

    with pytest.raises(ConfigError, match="absent.conf"):
        broker.start()
    broker.stop()
