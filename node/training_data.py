"""From a device's raw rows to what a learner trains on, as the task says.

The node holds raw rows (a file loaded once, or a stream's moving window);
the task carries the preprocessing steps and, once pooled, the global
normalization. This module runs the steps, computes the statistics a node
publishes for federated normalization, and shapes the result for the
learner (float32 features; int64 class labels or float32 targets). Pure:
rows and task in, arrays and counts out.

A task with no steps and no normalization takes the rows as they are, so
the reference task trains on exactly the arrays it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedbus.broker.errors import ConfigError, DataError
from fedbus.broker.messages import FeatureStatistics, Normalization, TrainingTask
from fedbus.kernels.feature_stats import feature_stats
from fedbus.node.preprocess import GlobalStats, Pipeline
from fedbus.node.sources import Table

__all__ = ["Prepared", "StatisticsNeeded", "node_statistics", "prepare"]

#: A node's data: called before every local run (a stream's window moves).
RowSource = Callable[[], Table]


@dataclass(frozen=True)
class Prepared:
    """Training arrays for one local run, and what preprocessing did to get them."""

    X: np.ndarray
    y: np.ndarray
    rows_raw: int
    report: dict[str, dict[str, int]]


@dataclass(frozen=True)
class StatisticsNeeded:
    """The task scales by pooled statistics it does not carry yet: send these, wait."""

    cleaned: Table
    report: dict[str, dict[str, int]]


def _feature_names(task: TrainingTask, table: Table) -> tuple[str, ...]:
    if task.features:
        missing = [name for name in task.features if name not in table.feature_names]
        if missing:
            raise ConfigError(f"the task needs features this node does not have: {missing}")
        return task.features
    return table.feature_names


def _select(table: Table, names: tuple[str, ...]) -> Table:
    """The table's columns in the task's order (a no-op when they already are)."""
    if names == table.feature_names:
        return table
    columns = [table.feature_names.index(name) for name in names]
    return Table(np.ascontiguousarray(table.X[:, columns]), table.y, names)


def global_stats(normalization: Normalization) -> GlobalStats:
    return GlobalStats(
        count=np.asarray(normalization.count, dtype=np.int64),
        mean=np.asarray(normalization.mean, dtype=np.float64),
        std=np.asarray(normalization.std, dtype=np.float64),
        min=np.asarray(normalization.minimum, dtype=np.float64),
        max=np.asarray(normalization.maximum, dtype=np.float64),
    )


def prepare(task: TrainingTask, table: Table, labels_kind: str) -> Prepared | StatisticsNeeded:
    """Run the task's steps on `table`; `labels_kind` is the learner's task kind.

    Raises ConfigError for a pipeline this node cannot run and DataError for
    rows it cannot use (no labels, non-integer class labels).
    """
    if table.y is None:
        raise DataError("this node's rows have no labels to train on")
    names = _feature_names(task, table)
    table = _select(table, names)
    pipeline = Pipeline.from_spec([dict(step) for step in task.preprocess], names)
    cleaned, report = pipeline.apply_until_scaling(table)
    if task.needs_normalization:
        return StatisticsNeeded(cleaned, report)
    if task.normalization is not None and pipeline.has_scaling:
        scaled, more = pipeline.apply_scaling(cleaned, global_stats(task.normalization))
        report = {**report, **more}
    else:
        scaled = cleaned
    if np.isnan(scaled.X).any():
        raise DataError(
            "rows still have missing cells after preprocessing: add an impute or drop_missing step"
        )
    y = scaled.y
    assert y is not None
    if labels_kind == "classification":
        if not np.all(y == np.round(y)):
            raise DataError("class labels must be whole numbers")
        labels = y.astype(np.int64)
    else:
        labels = y.astype(np.float32)
    return Prepared(np.ascontiguousarray(scaled.X, dtype=np.float32), labels, len(table.X), report)


def node_statistics(node: str, cleaned: Table) -> FeatureStatistics:
    """The `stats` message of a node's cleaned rows (section 7.7)."""
    stats = feature_stats(np.ascontiguousarray(cleaned.X, dtype=np.float64))
    seen = stats.count > 0
    return FeatureStatistics(
        node,
        tuple(int(c) for c in stats.count),
        tuple(stats.sum.tolist()),
        tuple(stats.sum_sq.tolist()),
        tuple(np.where(seen, stats.min, 0.0).tolist()),
        tuple(np.where(seen, stats.max, 0.0).tolist()),
    )
