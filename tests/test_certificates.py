"""The fleet CA: certificate fields and files (no broker), then real TLS brokers."""

from __future__ import annotations

import datetime
import ipaddress
import queue
import ssl
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from fedbus.broker.certificates import (
    TlsFiles,
    broker_tls_lines,
    ca_exists,
    init_ca,
    issue_client_cert,
)
from fedbus.broker.errors import ConfigError
from fedbus.broker.launcher import ManagedBroker

BrokerFactory = Callable[..., ManagedBroker]
TIMEOUT_S = 5.0


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the CA -----------------------------------------------------------------


def test_init_ca_writes_four_files_and_returns_the_brokers(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "tls")

    assert files == TlsFiles(
        ca_cert=tmp_path / "tls" / "ca.crt",
        cert=tmp_path / "tls" / "broker.crt",
        key=tmp_path / "tls" / "broker.key",
    )
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "broker.crt",
        "broker.key",
        "ca.crt",
        "ca.key",
    ]
    assert ca_exists(tmp_path / "tls")
    assert not ca_exists(tmp_path / "elsewhere")


def test_ca_certificate_is_a_self_signed_p256_ca_that_cannot_sign_sub_cas(
    tmp_path: Path,
) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)

    ca = _cert(init_ca(tmp_path, days=30, fleet="plant-7").ca_cert)

    constraints = _ext(ca, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.verify_directly_issued_by(ca)
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    assert "plant-7" in _common_name(ca)
    skew = before - ca.not_valid_before_utc
    assert datetime.timedelta(0) < skew < datetime.timedelta(hours=1)
    # Certificates keep whole seconds, so allow one second on either side.
    lifetime = ca.not_valid_after_utc - before
    assert abs(lifetime - datetime.timedelta(days=30)) < datetime.timedelta(seconds=1)


def test_broker_certificate_names_its_hosts_and_serves_tls(tmp_path: Path) -> None:
    files = init_ca(tmp_path, broker_hosts=["broker.example.org", "10.0.0.5", "::1"])

    broker, ca = _cert(files.cert), _cert(files.ca_cert)

    broker.verify_directly_issued_by(ca)
    san = _ext(broker, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert _common_name(broker) == "broker.example.org"
    assert list(_ext(broker, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(broker, x509.BasicConstraints).value.ca
    assert _ext(broker, x509.KeyUsage).value.digital_signature


def test_default_broker_hosts_are_localhost_and_loopback(tmp_path: Path) -> None:
    san = _ext(_cert(init_ca(tmp_path).cert), x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_private_keys_are_0600_and_match_their_certificates(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "ca")
    client = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "node-a")

    for key_path, cert_path in [
        (tmp_path / "ca" / "ca.key", files.ca_cert),
        (files.key, files.cert),
        (client.key, client.cert),
    ]:
        assert _mode(key_path) == 0o600, key_path
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        assert key.public_key().public_bytes(*public) == _cert(cert_path).public_key().public_bytes(
            *public
        )
    assert not list(tmp_path.rglob("*.tmp")), "no temp file is left behind"


def test_init_ca_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    init_ca(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_ca(tmp_path)

    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_init_ca_refuses_a_directory_with_a_stray_broker_key(tmp_path: Path) -> None:
    (tmp_path / "broker.key").write_text("someone else's key")

    with pytest.raises(ConfigError, match="broker.key"):
        init_ca(tmp_path)

    assert not ca_exists(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"broker_hosts": []},
        {"broker_hosts": "localhost"},
        {"broker_hosts": ["bad host"]},
        {"broker_hosts": ["-leading.dash"]},
        {"days": 0},
        {"days": -5},
        {"fleet": "a/b"},
    ],
)
def test_init_ca_rejects_bad_arguments_before_writing(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        init_ca(tmp_path / "tls", **kwargs)

    assert not (tmp_path / "tls").exists()


# --- client certificates ------------------------------------------------------


def test_client_certificate_carries_the_node_id_and_client_auth(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")

    files = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "out", days=7)

    assert files == TlsFiles(
        ca_cert=tmp_path / "out" / "ca.crt",
        cert=tmp_path / "out" / "client.crt",
        key=tmp_path / "out" / "client.key",
    )
    client, ca = _cert(files.cert), _cert(tmp_path / "ca" / "ca.crt")
    client.verify_directly_issued_by(ca)
    assert _common_name(client) == "node-a"
    assert list(_ext(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _ext(client, x509.BasicConstraints).value.ca
    assert files.ca_cert.read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    lifetime = client.not_valid_after_utc - client.not_valid_before_utc
    assert datetime.timedelta(days=7) < lifetime < datetime.timedelta(days=7, hours=1)


def test_every_certificate_gets_its_own_random_serial(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    first = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "a")
    second = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "b")

    serials = {
        _cert(path).serial_number
        for path in (first.ca_cert, tmp_path / "ca" / "broker.crt", first.cert, second.cert)
    }

    assert len(serials) == 4


def test_reissuing_replaces_the_client_certificate(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    old = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "out")
    old_serial = _cert(old.cert).serial_number

    new = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "out")

    assert new == old
    assert _cert(new.cert).serial_number != old_serial


@pytest.mark.parametrize(
    "common_name", ["", "node/a", "node+", "#", "node a", "x" * 65, "nöde", "a\nb"]
)
def test_bad_common_names_are_rejected(tmp_path: Path, common_name: str) -> None:
    init_ca(tmp_path / "ca")

    with pytest.raises(ConfigError, match="common name"):
        issue_client_cert(tmp_path / "ca", common_name, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_a_config_error(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    (tmp_path / "taken").write_text("a file, not a directory")

    with pytest.raises(ConfigError, match="cannot write"):
        issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "taken")
    with pytest.raises(ConfigError, match="cannot write"):
        init_ca(tmp_path / "taken" / "tls")


def test_issue_without_a_ca_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CA"):
        issue_client_cert(tmp_path, "node-a", tmp_path / "out")


def test_an_unreadable_ca_key_is_named_but_never_quoted(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"
    (tmp_path / "ca" / "ca.key").write_text(secret)

    with pytest.raises(ConfigError) as caught:
        issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "out")

    message = str(caught.value)
    assert "ca.key" in message
    assert "c2VjcmV0" not in message and "PRIVATE KEY" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_ca_key_from_another_ca_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    init_ca(tmp_path / "other")
    (tmp_path / "ca" / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())

    with pytest.raises(ConfigError, match="not the key of"):
        issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "out")


# --- mosquitto config lines -----------------------------------------------------


def test_broker_tls_lines_for_mutual_tls() -> None:
    files = TlsFiles(
        Path("/etc/fedbus/ca.crt"), Path("/etc/fedbus/b.crt"), Path("/etc/fedbus/b.key")
    )

    assert broker_tls_lines(files) == [
        "cafile /etc/fedbus/ca.crt",
        "certfile /etc/fedbus/b.crt",
        "keyfile /etc/fedbus/b.key",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
    ]


def test_broker_tls_lines_without_client_certificates() -> None:
    files = TlsFiles(Path("/c/ca.crt"), Path("/c/b.crt"), Path("/c/b.key"))

    lines = broker_tls_lines(files, require_certificate=False, identity_as_username=False)

    assert "require_certificate false" in lines
    assert "use_identity_as_username false" in lines


def test_identity_as_username_needs_client_certificates() -> None:
    files = TlsFiles(Path("/c/ca.crt"), Path("/c/b.crt"), Path("/c/b.key"))

    with pytest.raises(ConfigError, match="require_certificate"):
        broker_tls_lines(files, require_certificate=False)


def test_broker_tls_lines_refuse_a_path_that_would_break_the_config() -> None:
    files = TlsFiles(Path("/c/ca.crt\nallow_anonymous true"), Path("/c/b.crt"), Path("/c/b.key"))

    with pytest.raises(ConfigError):
        broker_tls_lines(files)


# --- real brokers -----------------------------------------------------------------


class _RefusedError(Exception):
    """The client got no successful CONNACK."""


class _Client:
    """A paho v2 MQTT 5 client, optionally over TLS, collecting messages."""

    def __init__(
        self, broker: ManagedBroker, files: TlsFiles | None, *, client_cert: bool = True
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.pubacks: queue.Queue[int] = queue.Queue()
        self._outcome: queue.Queue[str] = queue.Queue()
        self.mqtt = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        if files is not None:
            if client_cert:
                self.mqtt.tls_set(
                    ca_certs=str(files.ca_cert), certfile=str(files.cert), keyfile=str(files.key)
                )
            else:
                self.mqtt.tls_set(ca_certs=str(files.ca_cert))
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_connect_fail = lambda client, userdata: self._outcome.put("connect failed")
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.mqtt.on_publish = self._on_publish
        try:
            self.mqtt.connect(broker.host, broker.port)
        except (OSError, ssl.SSLError) as exc:
            raise _RefusedError(f"connect raised {exc!r}") from exc
        # Drive the network by hand until CONNACK or disconnect: the
        # background loop would wait a second to reconnect after a refusal.
        outcome = "no CONNACK within the timeout"
        deadline = time.monotonic() + TIMEOUT_S
        while self._outcome.empty() and time.monotonic() < deadline:
            self.mqtt.loop(timeout=0.05)
        if not self._outcome.empty():
            outcome = self._outcome.get()
        if outcome != "connected":
            self.mqtt.disconnect()
            raise _RefusedError(outcome)
        self.mqtt.loop_start()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: paho.ReasonCode,
        props: object,
    ) -> None:
        self._outcome.put("connected" if not reason.is_failure else f"CONNACK {reason}")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: paho.ReasonCode,
        props: object,
    ) -> None:
        self._outcome.put(f"disconnected: {reason}")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: paho.ReasonCode,
        props: object,
    ) -> None:
        self.pubacks.put(reason.value)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.mqtt.on_subscribe = lambda *args: done.set()
        self.mqtt.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        self.mqtt.publish(topic, payload, qos=1)
        return self.pubacks.get(timeout=TIMEOUT_S)

    def next_message(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def fleet_ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _tls_broker(factory: BrokerFactory, ca_dir: Path, *extra: str) -> ManagedBroker:
    files = TlsFiles(ca_dir / "ca.crt", ca_dir / "broker.crt", ca_dir / "broker.key")
    return factory(extra_lines=[*broker_tls_lines(files), *extra])


def _broker_log(broker: ManagedBroker, expected: str) -> str:
    """The broker's log, where OpenSSL says why it dropped a connection.

    The client can see the connection drop before mosquitto has written its
    log line, so this waits (up to the timeout) for `expected` to appear.
    """
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = broker.log_path.read_text(encoding="utf-8", errors="replace")
        if expected in text or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


@pytest.mark.broker
def test_client_with_a_fleet_certificate_receives_its_own_qos1_message(
    broker_factory: BrokerFactory, fleet_ca: Path, tmp_path: Path
) -> None:
    broker = _tls_broker(broker_factory, fleet_ca)
    files = issue_client_cert(fleet_ca, "node-a", tmp_path / "node-a")

    client = _Client(broker, files)
    try:
        client.subscribe("fedbus-test/tls")
        assert client.publish("fedbus-test/tls", b"over tls") == 0
        message = client.next_message()
    finally:
        client.close()

    assert message.topic == "fedbus-test/tls"
    assert message.payload == b"over tls"


@pytest.mark.broker
def test_client_without_a_certificate_is_refused(
    broker_factory: BrokerFactory, fleet_ca: Path, tmp_path: Path
) -> None:
    broker = _tls_broker(broker_factory, fleet_ca)
    files = issue_client_cert(fleet_ca, "node-a", tmp_path / "node-a")

    with pytest.raises(_RefusedError):
        _Client(broker, files, client_cert=False)

    assert "did not return a certificate" in _broker_log(broker, "did not return a certificate")


@pytest.mark.broker
def test_client_with_a_certificate_from_another_ca_is_refused(
    broker_factory: BrokerFactory, fleet_ca: Path, tmp_path: Path
) -> None:
    broker = _tls_broker(broker_factory, fleet_ca)
    init_ca(tmp_path / "rogue-ca")
    rogue = issue_client_cert(tmp_path / "rogue-ca", "node-a", tmp_path / "rogue")
    # Trusts the real broker, so only the broker's check of the client can fail.
    files = TlsFiles(ca_cert=fleet_ca / "ca.crt", cert=rogue.cert, key=rogue.key)

    with pytest.raises(_RefusedError):
        _Client(broker, files)

    assert "certificate verify failed" in _broker_log(broker, "certificate verify failed")


@pytest.mark.broker
def test_client_refuses_a_broker_certified_by_another_ca(
    broker_factory: BrokerFactory, fleet_ca: Path, tmp_path: Path
) -> None:
    broker = _tls_broker(broker_factory, fleet_ca)
    init_ca(tmp_path / "rogue-ca")
    trusting_rogue = issue_client_cert(tmp_path / "rogue-ca", "node-a", tmp_path / "rogue")

    with pytest.raises(_RefusedError, match="CERTIFICATE_VERIFY_FAILED"):
        _Client(broker, trusting_rogue)


@pytest.mark.broker
def test_client_checks_the_broker_host_name(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", broker_hosts=["broker.example.org"])
    broker = _tls_broker(broker_factory, tmp_path / "ca")
    files = issue_client_cert(tmp_path / "ca", "node-a", tmp_path / "node-a")

    with pytest.raises(_RefusedError, match="IP address mismatch"):
        _Client(broker, files)


@pytest.mark.broker
def test_plain_tcp_client_to_the_tls_listener_is_refused(
    broker_factory: BrokerFactory, fleet_ca: Path
) -> None:
    broker = _tls_broker(broker_factory, fleet_ca)

    with pytest.raises(_RefusedError):
        _Client(broker, None)

    assert "wrong version number" in _broker_log(broker, "wrong version number")


@pytest.mark.broker
def test_certificate_common_name_is_the_acl_username(
    broker_factory: BrokerFactory, fleet_ca: Path, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        "user node-a\ntopic write fedbus-test/a\n\nuser reader\ntopic read fedbus-test/#\n"
    )
    broker = _tls_broker(broker_factory, fleet_ca, f"acl_file {acl}", "allow_anonymous false")
    reader = _Client(broker, issue_client_cert(fleet_ca, "reader", tmp_path / "reader"))
    node_a = _Client(broker, issue_client_cert(fleet_ca, "node-a", tmp_path / "node-a"))
    node_b = _Client(broker, issue_client_cert(fleet_ca, "node-b", tmp_path / "node-b"))
    try:
        reader.subscribe("fedbus-test/#")

        # node-b's publish is acknowledged (as denied) before node-a publishes,
        # so had it been delivered, the reader would see it first.
        denied = node_b.publish("fedbus-test/a", b"from node-b")
        allowed = node_a.publish("fedbus-test/a", b"from node-a")
        first = reader.next_message()
    finally:
        for client in (reader, node_a, node_b):
            client.close()

    assert denied == 135, "MQTT 5 PUBACK 'Not authorized' for node-b"
    assert allowed == 0
    assert first.payload == b"from node-a"
    assert reader.messages.empty()
