"""What `fedbus demo` trains for each data set: task, pipeline, fleet data, test rows.

digits
    The reference task of BENCH-TASK.md (standardized centrally, as the
    benchmark defines it), softmax regression or an MLP (`--model mlp`).
diabetes
    Regression on raw clinical values. Every node standardizes with the
    statistics pooled from all nodes (federated normalization); the target
    is a test R² within 0.05 of least squares on all training rows in one
    place.
sensors
    Fault detection on the synthetic sensor fleet (fedbus.node.sensors):
    each node trains on a moving window its sensors keep filling, with
    median imputation, robust z-score anomaly dropping and federated
    standardization; scored on clean rows of devices it never saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.node.datasets import central_linear_baseline, load_diabetes_task, load_digits_task
from fedbus.node.partition import dirichlet_partition, iid_partition
from fedbus.node.sensors import SENSOR_FEATURES, SensorDevice, sensor_test_set
from fedbus.node.sources import StreamWindow, Table, from_arrays

__all__ = ["DATASETS", "DemoSetup", "SensorFeed", "build_setup"]

DATASETS = ("digits", "diabetes", "sensors")

#: Rows a sensor node's window holds, how many it starts with, and rows per second after.
SENSOR_WINDOW = 600
SENSOR_INITIAL_ROWS = 300
SENSOR_ROWS_PER_SECOND = 100.0


@dataclass
class SensorFeed:
    """Appends a device's rows to its window at a steady rate, on its own thread."""

    device: SensorDevice
    window: StreamWindow
    rows_per_second: float = SENSOR_ROWS_PER_SECOND
    next_row: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def fill(self, count: int) -> None:
        readings, labels = self.device.rows(self.next_row, count)
        self.window.append(readings, labels)
        self.next_row += count

    def run(self) -> None:
        period = 0.1
        per_tick = max(1, round(self.rows_per_second * period))
        while not self.stopping.wait(period):
            self.fill(per_tick)


@dataclass
class DemoSetup:
    """Everything the demo needs for one data set and model."""

    dataset: str
    kind: str  # "classification" | "regression"
    learner: str
    hidden: tuple[int, ...]
    n_features: int
    n_outputs: int
    feature_names: tuple[str, ...]
    pipeline: list[dict[str, Any]]
    local_lr: float
    batch_size: int
    target: float  # headline metric (accuracy or R²) that counts as reached
    #: per node: fixed arrays (features, labels), or a row source called each run
    node_data: list[Any]
    X_test: np.ndarray
    y_test: np.ndarray
    baseline: dict[str, float] = field(default_factory=dict)
    feeds: list[SensorFeed] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "classification" else "r2"


def _digits(
    nodes: int, seed: int, partition: str, alpha: float, model: str, hidden: tuple[int, ...]
) -> DemoSetup:
    task = load_digits_task()
    if partition == "iid":
        parts = iid_partition(len(task.y_train), nodes, seed=seed)
    else:
        parts = dirichlet_partition(task.y_train, nodes, alpha=alpha, seed=seed)
    return DemoSetup(
        dataset="digits",
        kind="classification",
        learner=model,
        hidden=hidden if model == "mlp" else (),
        n_features=task.n_features,
        n_outputs=task.n_classes,
        feature_names=(),
        pipeline=[],
        local_lr=0.1,
        batch_size=16,
        target=0.93,
        node_data=[(task.X_train[idx], task.y_train[idx]) for idx in parts],
        X_test=task.X_test,
        y_test=task.y_test,
    )


def _fixed(table: Table) -> Callable[[], Table]:
    """A row source that always returns the same rows (a file read once)."""
    return lambda: table


def _diabetes(nodes: int, seed: int) -> DemoSetup:
    task = load_diabetes_task()
    parts = iid_partition(len(task.y_train), nodes, seed=seed)
    baseline = central_linear_baseline(task)
    return DemoSetup(
        dataset="diabetes",
        kind="regression",
        learner="linear",
        hidden=(),
        n_features=task.X_train.shape[1],
        n_outputs=1,
        feature_names=task.feature_names,
        pipeline=[{"step": "standardize"}],
        local_lr=0.05,
        batch_size=8,
        target=baseline["r2"] - 0.05,
        node_data=[
            _fixed(from_arrays(task.X_train[idx], task.y_train[idx], task.feature_names))
            for idx in parts
        ],
        X_test=np.array(task.X_test),
        y_test=np.array(task.y_test),
        baseline=baseline,
    )


def _sensors(nodes: int, seed: int) -> DemoSetup:
    feeds = []
    for index in range(nodes):
        feed = SensorFeed(
            SensorDevice(seed, index),
            StreamWindow(len(SENSOR_FEATURES), SENSOR_WINDOW, feature_names=SENSOR_FEATURES),
        )
        feed.fill(SENSOR_INITIAL_ROWS)
        feeds.append(feed)
    X_test, y_test = sensor_test_set(seed)
    return DemoSetup(
        dataset="sensors",
        kind="classification",
        learner="logistic",
        hidden=(),
        n_features=len(SENSOR_FEATURES),
        n_outputs=1,
        feature_names=SENSOR_FEATURES,
        pipeline=[
            {"step": "impute", "strategy": "median"},
            {"step": "robust_zscore", "threshold": 3.5, "action": "drop"},
            {"step": "standardize"},
        ],
        local_lr=0.1,
        batch_size=16,
        target=0.85,
        node_data=[feed.window.snapshot for feed in feeds],
        X_test=X_test,
        y_test=y_test.astype(np.int64),
        feeds=feeds,
    )


def build_setup(
    dataset: str,
    *,
    nodes: int,
    seed: int,
    model: str | None = None,
    hidden: tuple[int, ...] = (64,),
    partition: str = "dirichlet",
    alpha: float = 0.5,
) -> DemoSetup:
    """The demo for `dataset`; `model` only chooses between softmax and mlp on digits."""
    if dataset == "digits":
        model = model or "softmax"
        if model not in ("softmax", "mlp"):
            raise ConfigError(f"--model for digits is softmax or mlp, got {model!r}")
        return _digits(nodes, seed, partition, alpha, model, hidden)
    if model not in (None, {"diabetes": "linear", "sensors": "logistic"}[dataset]):
        raise ConfigError(
            f"--dataset {dataset} trains its own model; --model {model} does not apply"
        )
    if dataset == "diabetes":
        return _diabetes(nodes, seed)
    if dataset == "sensors":
        return _sensors(nodes, seed)
    raise ConfigError(f"unknown data set {dataset!r}: expected one of {', '.join(DATASETS)}")
