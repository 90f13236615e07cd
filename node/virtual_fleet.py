"""A fleet in virtual time, in one process: the aggregator's real decisions, no broker.

For experiments that must be exact and quick, such as the robustness tests
with Byzantine nodes: every node trains the real learner on its partition,
its update goes through the real codec and `AggregatorCore` (validation,
staleness weighting, buffer, robust rules), but time is a number. A node's
local run takes `compute_seconds` plus the reference task's straggler delay
(BENCH-TASK.md), drawn from the node's own stream, so a run is a pure
function of its seeds and the same on every machine. The bus-level fleet
(fedbus.node.fleet) is what the demo and the benchmarks of real time use.

Event order: at time 0 every node takes model version 0 and trains; when
its run ends, its update is decided by the core, and the node immediately
starts its next run on whatever model is current. Ties go to the lower
node index.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.task_config import training_task
from fedbus.broker.codec import encode
from fedbus.broker.layouts import initial_weights
from fedbus.broker.messages import TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights
from fedbus.node.attacks import Attack, tamper
from fedbus.node.learners import build_learner
from fedbus.node.local_work import local_shuffle_rng, straggler_delay


@dataclass(frozen=True)
class VersionScore:
    seconds: float
    updates: int
    version: int
    accuracy: float
    #: Mean cross-entropy on the test set: what a boosted update ruins first.
    loss: float


@dataclass
class VirtualRun:
    scores: list[VersionScore] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0

    @property
    def final_accuracy(self) -> float:
        return self.scores[-1].accuracy if self.scores else 0.0

    @property
    def final_loss(self) -> float:
        return self.scores[-1].loss if self.scores else float("nan")


def digits_task(local_lr: float = 0.1, batch_size: int = 16) -> TrainingTask:
    """The reference task's softmax model (BENCH-TASK.md) as the aggregator states it."""
    return training_task(
        name="digits-20",
        learner="softmax",
        n_features=64,
        n_outputs=10,
        local_epochs=1,
        batch_size=batch_size,
        learning_rate=local_lr,
    )


def simulate(
    task: TrainingTask,
    partitions: Sequence[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    config: AggregationConfig,
    *,
    attackers: Mapping[int, Attack] | None = None,
    max_updates: int = 400,
    seed: int = 0,
    compute_seconds: float = 0.05,
) -> VirtualRun:
    """Run the fleet until `max_updates` updates were decided; score every new version."""
    attackers = attackers or {}
    core = AggregatorCore(
        task, BufferedAggregator(config, initial_weights(task.learner, task.weight_shapes))
    )
    learner = build_learner(task.learner, task.weight_shapes)
    X_test, y_test = test
    result = VirtualRun()
    runs = [0] * len(partitions)
    pending: dict[int, bytes] = {}
    events: list[tuple[float, int]] = []

    def start(node: int, now: float) -> None:
        runs[node] += 1
        run = runs[node]
        X, y = partitions[node]
        base = core.aggregator.weights
        learner.set_weights(base)
        learner.fit(
            X,
            y,
            epochs=task.local_epochs,
            batch_size=task.batch_size,
            lr=task.learning_rate,
            rng=local_shuffle_rng(seed, node, run),
        )
        local = learner.get_weights()
        delta = {name: (local[name] - base[name]).astype(np.float32) for name in base}
        if node in attackers:
            delta = tamper(attackers[node], delta, np.random.default_rng([seed, node, run, 7]))
        message = UpdateMessage(
            f"node-{node:03d}", run, core.version, len(y), encode_weights(delta)
        )
        pending[node] = encode(message)
        finish = now + compute_seconds + straggler_delay(seed, node, run)
        heapq.heappush(events, (finish, node))

    for node in range(len(partitions)):
        start(node, 0.0)
    decided = 0
    while events and decided < max_updates:
        now, node = heapq.heappop(events)
        outcome = core.handle_update(f"node-{node:03d}", pending.pop(node), now)
        decided += 1
        if outcome.ack.accepted:
            result.accepted += 1
        else:
            result.rejected += 1
        if outcome.model_changed:
            learner.set_weights(core.aggregator.weights)
            metrics = learner.evaluate(X_test, y_test)
            result.scores.append(
                VersionScore(
                    now, decided, core.version, metrics["accuracy"], float(metrics["loss"])
                )
            )
        start(node, now)
    return result
