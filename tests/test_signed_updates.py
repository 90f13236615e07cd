"""Signed updates: the digest, the aggregator's verdicts, and an attack over a secured bus.

The bus test runs the real aggregator daemon and real signing nodes through
a mosquitto with auth on. An attacker who has stolen node A's broker
password (but not its signing key) can publish on A's topic; what it sends,
forged or replayed, must be refused, counted, and leave the model alone.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.daemon import AggregatorDaemon, DaemonSettings
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.accounts import AGGREGATOR_ACCOUNT, AuthDir
from fedbus.broker.acl import Role
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode, encode
from fedbus.broker.credentials import load_credentials
from fedbus.broker.messages import AckMessage, RejectReason, TrainingTask, UpdateMessage
from fedbus.broker.signing import (
    load_signing_key,
    new_signing_key,
    public_key_bytes,
    sign_update,
    update_digest,
    verify_update,
)
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Topics

SHAPES = {"W": (3, 2), "b": (2,)}
FLEET = "default"


def _message(node: str = "n1", seq: int = 1, value: float = 0.5, **kw) -> UpdateMessage:  # type: ignore[no-untyped-def]
    delta = {name: np.full(shape, value, np.float32) for name, shape in SHAPES.items()}
    return UpdateMessage(node, seq, 0, 5, encode_weights(delta), **kw)


def _signed(key, message: UpdateMessage, fleet: str = FLEET) -> UpdateMessage:  # type: ignore[no-untyped-def]
    return dataclasses.replace(message, signature=sign_update(key, fleet, message))


def _core(keys: dict[str, bytes], buffer_size: int = 2) -> AggregatorCore:
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(
        task,
        BufferedAggregator(AggregationConfig.fedbuff(buffer_size), initial),
        verify_keys=keys,
        fleet=FLEET,
    )


# ------------------------------------------------------------------ digest


def test_digest_covers_every_field_and_the_fleet() -> None:
    base = _message(train_loss=0.25)
    digest = update_digest(FLEET, base)
    tensor = base.tensors[0]
    changed = [
        dataclasses.replace(base, seq=2),
        dataclasses.replace(base, base_version=1),
        dataclasses.replace(base, num_samples=6),
        dataclasses.replace(base, train_loss=None),
        dataclasses.replace(base, node="n2"),
        dataclasses.replace(
            base, tensors=(dataclasses.replace(tensor, data=b"\x00" + tensor.data[1:]),)
        ),
        dataclasses.replace(base, tensors=base.tensors[::-1]),
    ]
    digests = {update_digest(FLEET, m) for m in changed} | {update_digest("other", base)}
    assert digest not in digests and len(digests) == len(changed) + 1
    # The signature field itself is not part of what is signed.
    assert update_digest(FLEET, dataclasses.replace(base, signature=bytes(64))) == digest


def test_sign_and_verify_round_trip_through_the_codec() -> None:
    key = new_signing_key()
    message = decode(encode(_signed(key, _message())), UpdateMessage)
    assert verify_update(public_key_bytes(key), FLEET, message)
    assert not verify_update(public_key_bytes(new_signing_key()), FLEET, message)
    assert not verify_update(public_key_bytes(key), "other-fleet", message)
    assert not verify_update(public_key_bytes(key), FLEET, dataclasses.replace(message, seq=9))


def test_signing_key_file_is_hex_seed_and_errors_hide_content(tmp_path: Path) -> None:
    from fedbus.broker.errors import ConfigError

    auth = AuthDir(tmp_path / "auth")
    auth.initialize(FLEET)
    account = auth.add("n1", Role.NODE)
    key = load_signing_key(auth.credentials_dir("n1") / "signing.key")
    assert public_key_bytes(key) == account.verify_key
    bad = tmp_path / "bad.key"
    bad.write_text("secret-not-hex")
    with pytest.raises(ConfigError) as raised:
        load_signing_key(bad)
    assert "secret-not-hex" not in str(raised.value)


# ------------------------------------------------------------------ verdicts


def test_aggregator_rejects_unsigned_forged_and_resigned_updates() -> None:
    key_a, key_b = new_signing_key(), new_signing_key()
    core = _core({"a": public_key_bytes(key_a), "b": public_key_bytes(key_b)})
    before = {k: v.copy() for k, v in core.aggregator.weights.items()}
    verdicts = {
        "unsigned": core.handle_update("a", encode(_message("a"))),
        "forged": core.handle_update(
            "a", encode(dataclasses.replace(_message("a"), signature=bytes(64)))
        ),
        # Node b takes a's update and signs it with its own key.
        "resigned": core.handle_update("a", encode(_signed(key_b, _message("a")))),
        "tampered": core.handle_update(
            "a", encode(dataclasses.replace(_signed(key_a, _message("a")), num_samples=999))
        ),
        "unknown": core.handle_update("c", encode(_signed(new_signing_key(), _message("c")))),
    }
    reasons = {name: outcome.ack.reason for name, outcome in verdicts.items()}
    assert reasons == {
        "unsigned": RejectReason.UNSIGNED,
        "forged": RejectReason.BAD_SIGNATURE,
        "resigned": RejectReason.BAD_SIGNATURE,
        "tampered": RejectReason.BAD_SIGNATURE,
        "unknown": RejectReason.UNKNOWN_NODE,
    }
    assert core.counters.rejected == {"unsigned": 1, "bad_signature": 3, "unknown_node": 1}
    assert core.counters.accepted == 0 and core.aggregator.buffered == 0
    for name, weights in core.aggregator.weights.items():
        np.testing.assert_array_equal(weights, before[name])
    # A forgery with seq 1 did not use up the node's seq 1: the genuine update is taken.
    genuine = core.handle_update("a", encode(_signed(key_a, _message("a"))))
    assert genuine.ack.accepted and not genuine.ack.duplicate


def test_replayed_updates_are_never_applied_twice() -> None:
    key = new_signing_key()
    core = _core({"a": public_key_bytes(key)}, buffer_size=1)
    first = encode(_signed(key, _message("a", seq=1, value=1.0)))
    assert core.handle_update("a", first).ack.accepted
    assert core.handle_update("a", encode(_signed(key, _message("a", seq=2)))).ack.accepted
    weights = core.aggregator.weights["W"].copy()
    replay = core.handle_update("a", first)
    assert not replay.ack.accepted and replay.ack.reason is RejectReason.REPLAY
    assert core.counters.rejected["replay"] == 1
    np.testing.assert_array_equal(core.aggregator.weights["W"], weights)


def test_journal_replay_does_not_recheck_signatures_of_removed_nodes() -> None:
    key = new_signing_key()
    core = _core({}, buffer_size=1)
    outcome = core.handle_update("a", encode(_signed(key, _message("a"))), replaying=True)
    assert outcome.ack.accepted


# ------------------------------------------------------------------ over a secured bus


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _address(port: int, auth: AuthDir, name: str) -> BrokerAddress:
    creds = load_credentials(auth.credentials_dir(name))
    return BrokerAddress("127.0.0.1", port, creds.username, creds.password)


def _secured_aggregator(tmp_path: Path, broker_factory, *, store: bool = False):  # type: ignore[no-untyped-def]
    """A broker with auth on (node "a" enrolled) and the aggregator daemon serving it.

    The daemon rereads the auth dir's keys, as `fedbus aggregator --node-keys` does.
    """
    auth = AuthDir(tmp_path / "auth")
    auth.initialize(FLEET)
    auth.add("a", Role.NODE)
    broker = broker_factory(extra_lines=auth.broker_lines())
    core = _core(auth.verify_keys(), buffer_size=1)
    durable = None
    if store:
        durable = AggregatorStore(tmp_path / "aggregator")
        durable.recover(core)
    settings = DaemonSettings(
        _address(broker.port, auth, AGGREGATOR_ACCOUNT), Topics(FLEET), node_keys=auth.root
    )
    daemon = AggregatorDaemon(core, settings, durable)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    # An update published before the broker has the daemon's subscription goes nowhere.
    daemon.client.wait_connected(10)
    daemon.client.wait_subscribed(10)
    return auth, broker, core, daemon, thread


@pytest.mark.broker
def test_forged_and_replayed_updates_over_an_authenticated_bus(  # type: ignore[no-untyped-def]
    tmp_path: Path, broker_factory
) -> None:
    auth, broker, core, daemon, thread = _secured_aggregator(tmp_path, broker_factory, store=True)
    topics = Topics(FLEET)
    key = load_signing_key(auth.credentials_dir("a") / "signing.key")
    # The attacker holds a's broker password, so the broker lets it publish as a.
    client = BusClient("ignored", _address(broker.port, auth, "a"), persistent_session=False)
    client.subscribe(topics.ack("a"), qos=1)
    client.start()
    acks: list[AckMessage] = []

    def next_ack() -> AckMessage:
        _wait_for(lambda: not client.inbox.empty(), what="an ack")
        received = client.receive(0.1)
        assert received is not None
        acks.append(decode(received.payload, AckMessage))
        return acks[-1]

    try:
        client.wait_connected(10)
        client.wait_subscribed(10)
        genuine = encode(_signed(key, _message("a", seq=1, value=1.0)))
        client.publish(topics.update("a"), genuine, qos=1)
        assert next_ack().accepted
        _wait_for(lambda: core.version == 1, what="version 1")
        model = core.aggregator.weights["W"].copy()
        client.publish(topics.update("a"), encode(_signed(key, _message("a", seq=2))), qos=1)
        assert next_ack().accepted
        _wait_for(lambda: core.version == 2, what="version 2")
        model = core.aggregator.weights["W"].copy()

        forged = dataclasses.replace(_signed(key, _message("a", seq=3)), num_samples=10**6)
        client.publish(topics.update("a"), encode(forged), qos=1)
        verdict = next_ack()
        assert not verdict.accepted and verdict.reason is RejectReason.BAD_SIGNATURE
        client.publish(topics.update("a"), genuine, qos=1)  # captured seq 1, replayed
        verdict = next_ack()
        assert not verdict.accepted and verdict.reason is RejectReason.REPLAY

        assert core.counters.rejected == {"bad_signature": 1, "replay": 1}
        assert core.version == 2 and core.counters.accepted == 2
        np.testing.assert_array_equal(core.aggregator.weights["W"], model)
    finally:
        client.stop()
        daemon.stopping.set()
        thread.join(10)


def test_protocol_signature_example_is_what_the_code_computes() -> None:
    """PROTOCOL.md 17.3: the example a device implementer checks against."""
    import re

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    update_hex = re.search(r"### 13\.2 .*?```hex example=update\n(.*?)```", doc, re.S)
    example = re.search(r"```text signature-example\n(.*?)```", doc, re.S)
    assert update_hex is not None and example is not None
    fields = dict(line.split(":", 1) for line in example.group(1).strip().splitlines())
    message = decode(bytes.fromhex(update_hex.group(1)), UpdateMessage)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    assert public_key_bytes(key).hex() == fields["public key"].strip()
    assert update_digest(FLEET, message).hex() == fields["digest"].strip()
    assert sign_update(key, FLEET, message).hex() == fields["sig"].strip()


@pytest.mark.broker
def test_a_node_enrolled_while_the_aggregator_runs_is_accepted(  # type: ignore[no-untyped-def]
    tmp_path: Path, broker_factory
) -> None:
    auth, broker, core, daemon, thread = _secured_aggregator(tmp_path, broker_factory)
    topics = Topics(FLEET)
    try:
        _wait_for(lambda: core.known_nodes == frozenset({"a"}), what="keys loaded")
        auth.add("b", Role.NODE)
        broker.reload()
        _wait_for(lambda: core.known_nodes == frozenset({"a", "b"}), what="b enrolled")
        key = load_signing_key(auth.credentials_dir("b") / "signing.key")
        client = BusClient("ignored", _address(broker.port, auth, "b"), persistent_session=False)
        client.subscribe(topics.ack("b"), qos=1)
        client.start()
        client.wait_connected(10)
        client.wait_subscribed(10)
        client.publish(topics.update("b"), encode(_signed(key, _message("b"))), qos=1)
        received = client.receive(10)
        assert received is not None
        assert decode(received.payload, AckMessage).accepted
        client.stop()
        auth.remove("b")
        _wait_for(lambda: core.known_nodes == frozenset({"a"}), what="b withdrawn")
    finally:
        daemon.stopping.set()
        thread.join(10)


# ------------------------------------------------------------------ feature statistics


def _stats(node: str = "a", shift: float = 0.0, **kw):  # type: ignore[no-untyped-def]
    from fedbus.broker.messages import FeatureStatistics

    return FeatureStatistics(
        node, (4, 4), (1.0 + shift, 2.0), (3.0, 4.0), (0.0, 0.0), (1.0, 2.0), **kw
    )


def _stats_core(keys: dict[str, bytes]) -> AggregatorCore:
    from fedbus.aggregator.task_config import training_task

    task = training_task(
        name="t",
        learner="linear",
        n_features=2,
        n_outputs=1,
        features=("x", "y"),
        preprocess=({"step": "standardize"},),
    )
    initial = {name: np.zeros(shape, np.float32) for name, shape in task.weight_shapes.items()}
    return AggregatorCore(
        task,
        BufferedAggregator(AggregationConfig.fedbuff(2), initial),
        verify_keys=keys,
        fleet=FLEET,
        stats_quorum=2,
    )


def test_statistics_must_be_signed_by_the_nodes_key_when_keys_are_enrolled() -> None:
    from fedbus.broker.signing import sign_stats, stats_digest

    key_a, key_b = new_signing_key(), new_signing_key()
    core = _stats_core({"a": public_key_bytes(key_a), "b": public_key_bytes(key_b)})

    def signed(stats, key):  # type: ignore[no-untyped-def]
        return dataclasses.replace(stats, signature=sign_stats(key, FLEET, stats))

    assert stats_digest(FLEET, _stats()) != stats_digest(FLEET, _stats(shift=1.0))
    refused = [
        _stats(),  # unsigned
        signed(_stats("b"), key_a),  # b's statistics signed by a
        dataclasses.replace(signed(_stats(), key_a), total=(99.0, 2.0)),  # altered after signing
    ]
    for stats in refused:
        outcome = core.handle_stats(stats.node, encode(stats))
        assert not outcome.pooled
    assert core.counters.stats_rejected == 3 and core.task.normalization is None
    assert core.handle_stats("a", encode(signed(_stats("a"), key_a))).pooled
    assert core.handle_stats("b", encode(signed(_stats("b"), key_b))).complete
    assert core.task.normalization is not None and core.task.normalization.nodes == 2
