"""Watch the global model from the bus and score every version on held-out data.

The demo and the benchmarks use this to measure time to accuracy from the
outside, exactly as any other subscriber would see the fleet: it reads the
retained `model` and `aggregator/status` topics and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError, ProtocolError
from fedbus.broker.messages import AggregatorStatus, ModelMessage
from fedbus.broker.tensors import decode_weights
from fedbus.broker.topics import Channel, Topics
from fedbus.node.agent import build_learner


@dataclass(frozen=True)
class VersionScore:
    version: int
    seconds: float  # since the first model publication this observer saw
    accuracy: float
    loss: float


class ModelObserver:
    def __init__(
        self, address: BrokerAddress, topics: Topics, features: np.ndarray, labels: np.ndarray
    ) -> None:
        self.topics = topics
        self.features = features
        self.labels = labels
        self.scores: list[VersionScore] = []
        self.status: AggregatorStatus | None = None
        self.applied_at_version: dict[int, int] = {}
        self._t0: float | None = None
        self.client = BusClient(
            f"fedbus-{topics.fleet}-observer", address, persistent_session=False
        )
        self.client.subscribe(topics.model, qos=1)
        self.client.subscribe(topics.aggregator_status, qos=1)

    def start(self, timeout: float = 30.0) -> None:
        self.client.start()
        self.client.wait_connected(timeout)

    def stop(self) -> None:
        self.client.stop()

    @property
    def best_accuracy(self) -> float:
        return max((s.accuracy for s in self.scores), default=0.0)

    @property
    def latest(self) -> VersionScore | None:
        return self.scores[-1] if self.scores else None

    def poll(self, timeout: float) -> list[VersionScore]:
        """Take in what arrived (waiting up to `timeout`); return the new scores."""
        new: list[VersionScore] = []
        received = self.client.receive(timeout)
        while received is not None:
            arrived = time.monotonic()
            try:
                channel, _ = self.topics.parse(received.topic)
                if channel is Channel.MODEL:
                    score = self._score(decode(received.payload, ModelMessage), arrived)
                    if score is not None:
                        new.append(score)
                elif channel is Channel.AGGREGATOR_STATUS:
                    self._take_status(decode(received.payload, AggregatorStatus))
            except (CodecError, ProtocolError):
                pass
            received = self.client.receive(0)
        return new

    def _take_status(self, status: AggregatorStatus) -> None:
        if not status.counters:
            return  # a last will: the daemon is gone, its counters are unknown
        self.status = status
        applied = status.counters.get("applied")
        if isinstance(applied, int):
            self.applied_at_version.setdefault(status.version, applied)

    def _score(self, model: ModelMessage, arrived: float) -> VersionScore | None:
        if self.latest is not None and model.version <= self.latest.version:
            return None
        if self._t0 is None:
            self._t0 = arrived
        learner = build_learner(model.task)
        learner.set_weights(decode_weights(model.tensors, model.task.weight_shapes))
        result = learner.evaluate(self.features, self.labels)
        score = VersionScore(model.version, arrived - self._t0, result["accuracy"], result["loss"])
        self.scores.append(score)
        return score
