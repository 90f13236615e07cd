"""Real processes to kill: the aggregator as `python -m fedbus.aggregator`, and an ack ledger.

The ledger is an extra MQTT client subscribed to every `ack/<node>`: each
accepted ack it sees was published by the aggregator after its journal
fsync, so it is a superset of the acks the nodes themselves received. The
crash tests check every (node, seq) in it against the journal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError
from fedbus.broker.messages import AckMessage, ModelMessage
from fedbus.broker.tensors import decode_weights
from fedbus.broker.topics import Channel, Topics
from fedbus.node.learners import SoftmaxRegression

#: The aggregation settings `fedbus demo` uses by default (FedBuff, K = 10).
DEMO_AGGREGATOR_ARGS = ("--mode", "fedbuff", "-K", "10", "--features", "64", "--classes", "10")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class AggregatorProcess:
    """`python -m fedbus.aggregator` with a state dir, to start, SIGKILL and restart."""

    def __init__(
        self,
        address: BrokerAddress,
        topics: Topics,
        state_dir: Path,
        log_path: Path,
        extra_args: Sequence[str] = DEMO_AGGREGATOR_ARGS,
    ) -> None:
        self.args = [
            "--host",
            address.host,
            "--port",
            str(address.port),
            "--fleet",
            topics.fleet,
            "--state-dir",
            str(state_dir),
            *extra_args,
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AggregatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fedbus.aggregator", *self.args, "--log-level", "INFO"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.starts += 1
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        """SIGTERM and wait: the daemon checkpoints and exits 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def audit(self) -> dict:  # type: ignore[type-arg]
        """Run `fedbus aggregator --audit` on the state dir; its JSON report."""
        done = subprocess.run(
            [sys.executable, "-m", "fedbus.aggregator", *self.args, "--audit"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]


class AckLedger:
    """Every ack and the newest retained model, as seen from the broker."""

    def __init__(self, address: BrokerAddress, topics: Topics) -> None:
        self.topics = topics
        self.accepted: set[tuple[str, int]] = set()
        self.duplicate_acks = 0
        self.rejected = 0
        self.latest_model: ModelMessage | None = None
        self.client = BusClient("test-ack-ledger", address, persistent_session=False)
        self.client.subscribe(topics.all_nodes(Channel.ACK))
        self.client.subscribe(topics.model)

    def start(self) -> AckLedger:
        self.client.start()
        self.client.wait_connected(10)
        return self

    def poll(self, timeout: float = 0.0) -> None:
        received = self.client.receive(timeout)
        while received is not None:
            self._take(received.topic, received.payload)
            received = self.client.receive(0)

    def _take(self, topic: str, payload: bytes) -> None:
        channel, _ = self.topics.parse(topic)
        try:
            if channel is Channel.MODEL:
                model = decode(payload, ModelMessage)
                if self.latest_model is None or model.version >= self.latest_model.version:
                    self.latest_model = model
                return
            ack = decode(payload, AckMessage)
        except CodecError:
            return
        if ack.duplicate:
            self.duplicate_acks += 1
        if ack.accepted and ack.seq is not None:
            self.accepted.add((ack.node, ack.seq))
        elif not ack.accepted:
            self.rejected += 1

    def stop(self) -> None:
        self.client.stop()


def accuracy(model: ModelMessage, features: np.ndarray, labels: np.ndarray) -> float:
    weights = decode_weights(model.tensors, model.task.weight_shapes)
    n_features, n_classes = model.task.weight_shapes["W"]
    learner = SoftmaxRegression(n_features, n_classes)
    learner.set_weights(weights)
    return float(np.mean(learner.predict(features) == labels))
