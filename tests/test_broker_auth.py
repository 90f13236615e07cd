"""Broker auth: accounts on disk, the ACL mosquitto enforces, and `fedbus broker` actions.

The integration tests run a real mosquitto with the auth directory's
password file and ACL and talk to it with real paho clients: a denied
publish must be refused by the broker itself (MQTT 5 PUBACK "Not
authorized") and never reach the aggregator's subscription.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedbus.broker.accounts import (
    AGGREGATOR_ACCOUNT,
    OBSERVER_ACCOUNT,
    AuthDir,
    mosquitto_password_hash,
)
from fedbus.broker.acl import Role, account_rules
from fedbus.broker.errors import ConfigError
from fedbus.broker.serve import main as broker_main
from fedbus.broker.topics import Channel, Topics

TOPICS = Topics("default")


@pytest.fixture
def auth(tmp_path: Path) -> AuthDir:
    folder = AuthDir(tmp_path / "auth")
    folder.initialize("default")
    folder.add("node-a", Role.NODE)
    folder.add("node-b", Role.NODE)
    return folder


def _password(auth: AuthDir, name: str) -> str:
    return (auth.credentials_dir(name) / "password").read_text().strip()


class _Client:
    """A raw paho MQTT 5 client that records what the broker answers."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.connack: object = None
        self.pubacks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.done = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.done.wait(5), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        self.connack = reason
        self.done.set()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:  # type: ignore[no-untyped-def]
        self.pubacks[mid] = str(reason)

    @property
    def accepted(self) -> bool:
        return not self.connack.is_failure  # type: ignore[attr-defined]

    def publish(self, topic: str, payload: bytes) -> str:
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 5
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe and wait for the SUBACK: a publish after it reaches this client."""
        subacked = threading.Event()
        self.client.on_subscribe = lambda *args: subacked.set()
        self.client.subscribe(topic_filter, qos=1)
        assert subacked.wait(5), "no SUBACK"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --------------------------------------------------------------- pure parts


def test_password_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    salt = bytes(range(12))
    line = mosquitto_password_hash("secret", salt)
    kind, rounds, salt_b64, digest_b64 = line.split("$")[1:]
    assert (kind, rounds) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert base64.b64decode(digest_b64) == expected


def test_node_rules_grant_only_its_own_topics_and_the_model() -> None:
    rules = account_rules(TOPICS, "node-a", Role.NODE)
    writes = {line.split()[2] for line in rules if line.startswith("topic write")}
    reads = {line.split()[2] for line in rules if line.startswith("topic read ")}
    assert all("node-a" in topic for topic in writes)
    assert {TOPICS.update("node-a"), TOPICS.status("node-a"), TOPICS.stats("node-a")} <= writes
    assert TOPICS.model not in writes
    assert reads == {
        TOPICS.model,
        TOPICS.model + "/chunk/+",
        TOPICS.ack("node-a"),
        TOPICS.ack("node-a") + "/chunk/+",
    }
    assert not any("readwrite" in line for line in rules)


def test_auth_dir_files_registry_and_secrets(auth: AuthDir) -> None:
    names = {a.name: a.role for a in auth.accounts()}
    assert names == {
        AGGREGATOR_ACCOUNT: Role.AGGREGATOR,
        OBSERVER_ACCOUNT: Role.OBSERVER,
        "node-a": Role.NODE,
        "node-b": Role.NODE,
    }
    assert set(auth.verify_keys()) == {"node-a", "node-b"}
    for secret in (
        auth.password_path,
        auth.credentials_dir("node-a") / "password",
        auth.credentials_dir("node-a") / "signing.key",
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    registry = auth.registry_path.read_text()
    assert _password(auth, "node-a") not in registry
    assert _password(auth, "node-a") not in auth.password_path.read_text()
    assert "user node-b" in auth.acl_path.read_text()


def test_names_reserved_duplicate_and_invalid_are_refused(auth: AuthDir) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        auth.add("node-a", Role.NODE)
    auth.remove(AGGREGATOR_ACCOUNT)
    with pytest.raises(ConfigError, match="reserved"):
        auth.add(AGGREGATOR_ACCOUNT, Role.NODE)
    with pytest.raises(ConfigError, match="account name"):
        auth.add("bad/name", Role.NODE)
    with pytest.raises(ConfigError, match="belongs to fleet"):
        auth.initialize("other")


def test_remove_node_drops_password_acl_key_and_credentials(auth: AuthDir) -> None:
    auth.remove("node-b")
    assert "node-b" not in auth.verify_keys()
    assert "node-b:" not in auth.password_path.read_text()
    assert "user node-b" not in auth.acl_path.read_text()
    assert not auth.credentials_dir("node-b").exists()
    with pytest.raises(ConfigError, match="no account"):
        auth.remove("node-b")


def test_cli_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "auth"
    assert broker_main(["add-node", "sensor-7", "--auth-dir", str(folder), "--fleet", "f1"]) == 0
    out = capsys.readouterr().out
    password = (folder / "credentials" / "sensor-7" / "password").read_text().strip()
    assert "sensor-7" in out and password not in out
    assert broker_main(["list-nodes", "--auth-dir", str(folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["fleet"] == "f1"
    assert {a["name"] for a in listed["accounts"]} == {"sensor-7", "aggregator", "observer"}
    assert broker_main(["remove-node", "sensor-7", "--auth-dir", str(folder)]) == 0
    with pytest.raises(SystemExit) as exited:
        broker_main(["remove-node", "sensor-7", "--auth-dir", str(folder)])
    assert exited.value.code == 2


# --------------------------------------------------------------- real broker


@pytest.mark.broker
def test_anonymous_and_wrong_password_cannot_connect(auth: AuthDir, broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(extra_lines=auth.broker_lines())
    anonymous = _Client(broker.port, None, None)
    wrong = _Client(broker.port, "node-a", "not-the-password")
    right = _Client(broker.port, "node-a", _password(auth, "node-a"))
    try:
        assert not anonymous.accepted
        assert not wrong.accepted
        assert right.accepted
    finally:
        for client in (anonymous, wrong, right):
            client.close()


@pytest.mark.broker
def test_node_cannot_publish_as_another_node_nor_the_model(auth: AuthDir, broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(extra_lines=auth.broker_lines())
    aggregator = _Client(broker.port, AGGREGATOR_ACCOUNT, _password(auth, AGGREGATOR_ACCOUNT))
    observer = _Client(broker.port, OBSERVER_ACCOUNT, _password(auth, OBSERVER_ACCOUNT))
    node_a = _Client(broker.port, "node-a", _password(auth, "node-a"))
    try:
        aggregator.subscribe(TOPICS.all_nodes(Channel.UPDATE))
        observer.subscribe(TOPICS.everything)
        assert "Not authorized" in node_a.publish(TOPICS.update("node-b"), b"forged")
        assert "Not authorized" in node_a.publish(TOPICS.model, b"forged model")
        assert "Not authorized" in node_a.publish(TOPICS.ack("node-b"), b"forged ack")
        # The control: its own topic goes through, so the wait below is long enough.
        assert node_a.publish(TOPICS.update("node-a"), b"genuine") == "Success"
        _until(lambda: aggregator.messages and observer.messages)
        assert aggregator.messages == [(TOPICS.update("node-a"), b"genuine")]
        assert observer.messages == [(TOPICS.update("node-a"), b"genuine")]
        # Nor may a node read another node's update or publish anything as observer.
        node_b = _Client(broker.port, "node-b", _password(auth, "node-b"))
        node_b.subscribe(TOPICS.update("node-a"))
        assert node_a.publish(TOPICS.update("node-a"), b"private") == "Success"
        assert "Not authorized" in observer.publish(TOPICS.model, b"x")
        _until(lambda: len(aggregator.messages) == 2)
        time.sleep(0.2)
        assert node_b.messages == []
        node_b.close()
    finally:
        for client in (aggregator, observer, node_a):
            client.close()


@pytest.mark.broker
def test_removed_node_is_locked_out_after_reload(auth: AuthDir, broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(extra_lines=auth.broker_lines())
    password = _password(auth, "node-b")
    before = _Client(broker.port, "node-b", password)
    assert before.accepted
    before.close()
    auth.remove("node-b")
    broker.reload()
    # mosquitto rereads the files when it handles the signal: try until it has.
    deadline = time.monotonic() + 5
    while True:
        after = _Client(broker.port, "node-b", password)
        after.close()
        if not after.accepted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not after.accepted


@pytest.mark.broker
def test_the_shipped_configs_tls_block_works_when_uncommented(  # type: ignore[no-untyped-def]
    tmp_path: Path, broker_factory
) -> None:
    """mosquitto.conf says how to enable TLS by hand; doing exactly that must work."""
    import re

    from fedbus.broker.certificates import init_ca, issue_client_cert

    init_ca(tmp_path / "tls")
    client_files = issue_client_cert(tmp_path / "tls", "node-a", tmp_path / "node-a")
    text = (Path(__file__).resolve().parents[1] / "mosquitto.conf").read_text()
    found = re.search(r"^# (listener 8883 .*)\n((?:# \S.*\n)+)", text, re.M)
    assert found is not None, "the commented TLS block is gone from mosquitto.conf"
    block = [found.group(1)] + [line[2:] for line in found.group(2).splitlines()]
    block = [line.replace("/etc/fedbus/auth/tls", str(tmp_path / "tls")) for line in block]
    assert "listener 1883 127.0.0.1\n" in text
    config = tmp_path / "tls.conf"
    config.write_text(text.replace("listener 1883 127.0.0.1\n", "\n".join(block) + "\n"))
    broker = broker_factory(config)
    connected = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.tls_set(
        ca_certs=str(client_files.ca_cert),
        certfile=str(client_files.cert),
        keyfile=str(client_files.key),
    )
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert connected.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.broker
def test_init_tls_then_a_node_logs_in_with_its_credentials_folder(  # type: ignore[no-untyped-def]
    tmp_path: Path, broker_factory
) -> None:
    """The path a deployment takes: add-node, init-tls, broker --tls, node --credentials --tls."""
    import argparse

    from fedbus.broker.cli_common import add_bus_arguments, bus_from_args
    from fedbus.broker.client import BusClient
    from fedbus.broker.serve import security_lines

    folder = tmp_path / "auth"
    assert broker_main(["add-node", "node-a", "--auth-dir", str(folder)]) == 0
    assert broker_main(["init-tls", "--auth-dir", str(folder)]) == 0
    assert broker_main(["add-node", "node-b", "--auth-dir", str(folder)]) == 0  # after the CA
    for name in ("node-a", "node-b", AGGREGATOR_ACCOUNT):
        assert (folder / "credentials" / name / "client.crt").is_file()
    broker = broker_factory(extra_lines=security_lines(folder, tls=True))
    parser = argparse.ArgumentParser()
    add_bus_arguments(parser)

    def address(name: str, *flags: str):  # type: ignore[no-untyped-def]
        args = parser.parse_args(
            ["--port", str(broker.port), "--credentials", str(folder / "credentials" / name)]
            + list(flags)
        )
        return bus_from_args(args)[0]

    reader = BusClient("r", address(AGGREGATOR_ACCOUNT, "--tls"), persistent_session=False)
    reader.subscribe(TOPICS.all_nodes(Channel.UPDATE), qos=1)
    node = BusClient("n", address("node-b", "--tls"), persistent_session=False)
    try:
        reader.start()
        node.start()
        reader.wait_connected(10)
        reader.wait_subscribed(10)
        node.wait_connected(10)
        node.publish(TOPICS.update("node-b"), b"over tls, as node-b", qos=1)
        node.publish(TOPICS.update("node-a"), b"as someone else", qos=1)
        received = reader.receive(5)
        assert received is not None and received.payload == b"over tls, as node-b"
        assert reader.receive(0.5) is None
    finally:
        node.stop()
        reader.stop()


def test_cli_keeps_an_existing_directorys_fleet(tmp_path: Path) -> None:
    folder = str(tmp_path / "auth")
    assert broker_main(["add-node", "n1", "--auth-dir", folder, "--fleet", "plant-7"]) == 0
    assert broker_main(["add-node", "n2", "--auth-dir", folder]) == 0  # no --fleet: kept
    assert AuthDir(tmp_path / "auth").fleet() == "plant-7"
    with pytest.raises(SystemExit) as exited:
        broker_main(["add-node", "n3", "--auth-dir", folder, "--fleet", "other"])
    assert exited.value.code == 2
