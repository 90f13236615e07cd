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
from fedbus.broker.messages import AggregatorStatus, ModelMessage, TrainingTask
from fedbus.broker.tensors import decode_weights
from fedbus.broker.topics import Channel, Topics
from fedbus.node.learners import build_learner
from fedbus.node.portable import inference_steps, normalization_lists, transform_rows

#: The headline metric of each kind of task: higher is better for both.
METRICS = {"classification": "accuracy", "regression": "r2"}


@dataclass(frozen=True)
class VersionScore:
    version: int
    seconds: float  # since the first model publication this observer saw
    score: float  # the headline metric: accuracy, or R² for regression
    loss: float
    rmse: float | None = None  # regression only

    @property
    def accuracy(self) -> float:
        """The score under its classification name (digits-era callers)."""
        return self.score


class ModelObserver:
    """Scores each model version on held-out raw rows, preprocessed as the task says.

    `features` are raw rows (NaN for missing); the task's inference transform
    (fill with pooled means, clip, scale with the pooled statistics) is
    applied before the learner sees them, exactly as a device would predict.
    A model whose task still awaits its normalization is not scored.
    """

    def __init__(
        self,
        address: BrokerAddress,
        topics: Topics,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        kind: str = "classification",
    ) -> None:
        self.topics = topics
        self.features = features
        self.labels = labels
        self.kind = kind
        self.metric = METRICS[kind]
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
    def best_score(self) -> float:
        return max((s.score for s in self.scores), default=float("-inf"))

    @property
    def best_accuracy(self) -> float:
        return max((s.score for s in self.scores), default=0.0)

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
        task = model.task
        if task.needs_normalization:
            return None  # nodes do not train on it yet either
        if self._t0 is None:
            self._t0 = arrived
        learner = build_learner(task.learner, task.weight_shapes)
        learner.set_weights(decode_weights(model.tensors, task.weight_shapes))
        X = self._prepared(task)
        if self.kind == "regression":
            result = learner.evaluate(X, self.labels.astype(np.float32))
            score = VersionScore(
                model.version, arrived - self._t0, result["r2"], result["loss"], result["rmse"]
            )
        else:
            result = learner.evaluate(X, self.labels)
            score = VersionScore(
                model.version, arrived - self._t0, result["accuracy"], result["loss"]
            )
        self.scores.append(score)
        return score

    def _prepared(self, task: TrainingTask) -> np.ndarray:
        if not task.preprocess and task.normalization is None:
            return self.features  # the reference task: rows exactly as given
        names = task.features or tuple(f"x{i}" for i in range(self.features.shape[1]))
        steps = inference_steps(task.preprocess, names, normalization_lists(task.normalization))
        return np.ascontiguousarray(transform_rows(steps, self.features), dtype=np.float32)
