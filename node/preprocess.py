"""The preprocessing pipeline every node applies to its raw rows (docs/PROTOCOL.md 16).

The aggregator publishes the steps inside the training task as plain data
(a list of maps), so every node cleans and scales its rows the same way.
That list arrives from the network: :meth:`Pipeline.from_spec` accepts only
what it knows (step names, keys, types, finite numbers) and answers anything
else with a ConfigError that names the step, never with a crash.

Cleaning steps use only the node's own rows. Scaling steps (``standardize``,
``minmax``) use global statistics pooled from every node, so a node runs the
pipeline in two halves: :meth:`Pipeline.apply_until_scaling` cleans, the node
publishes the statistics of the cleaned rows (fedbus.kernels.feature_stats)
and receives the pooled ones, then :meth:`Pipeline.apply_scaling` scales.
Applying is pure: the input table is never written to, and every step
reports counts of what it did, keyed ``"<position>:<step>"``.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedbus.broker.errors import ConfigError
from fedbus.broker.messages import MAX_PREPROCESS_STEPS
from fedbus.kernels.feature_stats import GlobalStats
from fedbus.node.sources import Table

__all__ = ["GlobalStats", "Pipeline", "Report"]

#: Per step (``"<position>:<step>"``), counts of what it did.
Report = dict[str, dict[str, int]]

_MAD_TO_STD = 0.6745
"""The 0.75 quantile of the standard normal: the MAD of normal data is 0.6745 sigma,
so 0.6745 * (x - median) / MAD reads like an ordinary z-score."""


def _shown(value: object) -> str:
    """A short repr of untrusted input for an error message (bounded length and depth)."""
    return reprlib.repr(value)


#: A step's new features, new labels (None: unlabelled rows) and counts.
_Result = tuple[np.ndarray, np.ndarray | None, dict[str, int]]


class _Step:
    """One step: parsed and checked parameters, its canonical spec, and how to apply it."""

    name: ClassVar[str]
    scaling: ClassVar[bool] = False

    def to_spec(self, feature_names: tuple[str, ...]) -> dict[str, Any]:
        return {"step": self.name}

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        """New (X, y) and counts; never writes into its arguments."""
        raise NotImplementedError


def _keep_rows(X: np.ndarray, y: np.ndarray | None, keep: np.ndarray) -> _Result:
    kept_y = y[keep] if y is not None else None
    return X[keep], kept_y, {"rows_dropped": int(len(X) - keep.sum())}


@dataclass(frozen=True)
class Impute(_Step):
    """Fill missing cells with the column's mean or median on this node, or a constant.

    A column with no value at all is filled with 0 (mean, median) and counted.
    """

    name: ClassVar[str] = "impute"
    strategy: str
    value: float | None = None

    def to_spec(self, feature_names: tuple[str, ...]) -> dict[str, Any]:
        spec: dict[str, Any] = {"step": self.name, "strategy": self.strategy}
        if self.strategy == "constant":
            spec["value"] = self.value
        return spec

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        missing = np.isnan(X)
        empty = missing.all(axis=0) & (len(X) > 0)
        fill = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            present = X[~missing[:, j], j]
            if self.strategy == "constant":
                fill[j] = self.value
            elif present.size:
                fill[j] = np.median(present) if self.strategy == "median" else present.mean()
        counts = {"cells_filled": int(missing.sum()), "columns_without_values": int(empty.sum())}
        return np.where(missing, fill, X), y, counts


@dataclass(frozen=True)
class DropMissing(_Step):
    """Drop rows with any missing feature."""

    name: ClassVar[str] = "drop_missing"

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        return _keep_rows(X, y, ~np.isnan(X).any(axis=1))


@dataclass(frozen=True)
class DropDuplicates(_Step):
    """Drop rows equal (features and label) to an earlier row; missing cells match missing."""

    name: ClassVar[str] = "drop_duplicates"

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        rows = X if y is None else np.column_stack([X, y])
        # one bit pattern per value: every NaN alike, -0.0 as 0.0
        rows = np.ascontiguousarray(np.where(np.isnan(rows), np.nan, rows + 0.0))
        keep = np.zeros(len(rows), dtype=bool)
        if rows.shape[1] == 0:
            keep[:1] = True  # rows without values are all equal
        else:
            as_bytes = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
            keep[np.unique(as_bytes, return_index=True)[1]] = True
        return _keep_rows(X, y, keep)


@dataclass(frozen=True)
class Clip(_Step):
    """Clamp named features into [low, high]; None leaves that side open."""

    name: ClassVar[str] = "clip"
    bounds: tuple[tuple[int, float | None, float | None], ...]  # (column, low, high)

    def to_spec(self, feature_names: tuple[str, ...]) -> dict[str, Any]:
        pairs = {feature_names[column]: [low, high] for column, low, high in self.bounds}
        return {"step": self.name, "bounds": pairs}

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        X = X.copy()
        clipped = 0
        for column, low, high in self.bounds:
            values = X[:, column]
            lower = -math.inf if low is None else low
            upper = math.inf if high is None else high
            clipped += int(((values < lower) | (values > upper)).sum())  # NaN is neither
            np.clip(values, lower, upper, out=values)
        return X, y, {"cells_clipped": clipped}


@dataclass(frozen=True)
class RobustZScore(_Step):
    """Flag rows with any |modified z-score| above ``threshold``; drop or only count them.

    The modified z-score of Iglewicz and Hoaglin (How to Detect and Handle
    Outliers, ASQC, 1993): z = 0.6745 * (x - median) / MAD per feature, MAD
    the median absolute deviation, both over this node's present values.
    Median and MAD are themselves barely moved by the outliers, unlike the
    mean and std, which a few huge glitches inflate until nothing looks
    unusual. A feature with MAD 0 (or no values) is skipped and counted.
    """

    name: ClassVar[str] = "robust_zscore"
    threshold: float = 3.5
    action: str = "drop"

    def to_spec(self, feature_names: tuple[str, ...]) -> dict[str, Any]:
        return {"step": self.name, "threshold": self.threshold, "action": self.action}

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        flagged = np.zeros(len(X), dtype=bool)
        skipped = 0
        for j in range(X.shape[1]):
            column = X[:, j]
            present = column[~np.isnan(column)]
            median = np.median(present) if present.size else 0.0
            mad = np.median(np.abs(present - median)) if present.size else 0.0
            if mad == 0:
                skipped += 1
                continue
            flagged |= np.abs(_MAD_TO_STD * (column - median) / mad) > self.threshold
        counts = {"rows_flagged": int(flagged.sum()), "features_skipped": skipped}
        if self.action == "keep":
            return X, y, {**counts, "rows_dropped": 0}
        X, y, dropped = _keep_rows(X, y, ~flagged)
        return X, y, {**counts, **dropped}


def _needs(stats: GlobalStats | None, step: str) -> GlobalStats:
    if stats is None:
        raise ConfigError(
            f"{step} needs global statistics (the task's pooled normalization); none were given"
        )
    return stats


def _affine(
    X: np.ndarray, centre: np.ndarray, spread: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """(X - centre) / spread, a spread of 0 counting as 1 (a constant feature stays put)."""
    flat = spread == 0
    return (X - centre) / np.where(flat, 1.0, spread), {"features_without_spread": int(flat.sum())}


@dataclass(frozen=True)
class Standardize(_Step):
    """x <- (x - mean) / std with the pooled (global) mean and population std."""

    name: ClassVar[str] = "standardize"
    scaling: ClassVar[bool] = True

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        stats = _needs(stats, self.name)
        scaled, counts = _affine(X, stats.mean, stats.std)
        return scaled, y, counts


@dataclass(frozen=True)
class MinMax(_Step):
    """x <- (x - min) / (max - min) with the pooled (global) extremes: into [0, 1]."""

    name: ClassVar[str] = "minmax"
    scaling: ClassVar[bool] = True

    def apply(self, X: np.ndarray, y: np.ndarray | None, stats: GlobalStats | None) -> _Result:
        stats = _needs(stats, self.name)
        scaled, counts = _affine(X, stats.min, stats.max - stats.min)
        return scaled, y, counts


# ---------------------------------------------------------------- parsing


def _number(value: object, where: str) -> float:
    """A finite real number (bool is not one); ConfigError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {_shown(value)}")
    return number


def _choice(value: object, choices: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _parse_impute(params: Mapping[str, Any], where: str, names: tuple[str, ...]) -> _Step:
    if "strategy" not in params:
        raise ConfigError(f"{where}: missing 'strategy' (mean, median or constant)")
    strategy = _choice(params["strategy"], ("mean", "median", "constant"), f"{where}: strategy")
    if strategy != "constant":
        if "value" in params:
            raise ConfigError(f"{where}: 'value' applies only to strategy 'constant'")
        return Impute(strategy)
    if "value" not in params:
        raise ConfigError(f"{where}: strategy 'constant' needs a 'value'")
    return Impute(strategy, _number(params["value"], f"{where}: value"))


def _parse_bound(value: object, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _parse_clip(params: Mapping[str, Any], where: str, names: tuple[str, ...]) -> _Step:
    bounds = params.get("bounds")
    if not isinstance(bounds, Mapping):
        raise ConfigError(f"{where}: 'bounds' must be a map of feature name to [low, high]")
    parsed = []
    for name, pair in bounds.items():
        if name not in names:  # a non-str key is no feature name either
            known = _shown(list(names))
            raise ConfigError(f"{where}: unknown feature {_shown(name)} (features: {known})")
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ConfigError(
                f"{where}: bounds of {name!r} must be [low, high], got {_shown(pair)}"
            )
        low = _parse_bound(pair[0], f"{where}: lower bound of {name!r}")
        high = _parse_bound(pair[1], f"{where}: upper bound of {name!r}")
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{where}: bounds of {name!r} are reversed: {low} > {high}")
        parsed.append((names.index(name), low, high))
    return Clip(tuple(sorted(parsed)))


def _parse_robust_zscore(params: Mapping[str, Any], where: str, names: tuple[str, ...]) -> _Step:
    threshold = _number(params.get("threshold", 3.5), f"{where}: threshold")
    if threshold <= 0:
        raise ConfigError(f"{where}: threshold must be > 0, got {threshold}")
    return RobustZScore(
        threshold, _choice(params.get("action", "drop"), ("drop", "keep"), f"{where}: action")
    )


#: Parses a step's map (where: the step's position and name, for messages) over the features.
_Parser = Callable[[Mapping[str, Any], str, tuple[str, ...]], _Step]


def _no_parameters(step: _Step) -> _Parser:
    return lambda params, where, names: step


#: Each step's parser and the keys it may carry besides "step".
_STEPS: dict[str, tuple[_Parser, frozenset[str]]] = {
    "impute": (_parse_impute, frozenset({"strategy", "value"})),
    "drop_missing": (_no_parameters(DropMissing()), frozenset()),
    "drop_duplicates": (_no_parameters(DropDuplicates()), frozenset()),
    "clip": (_parse_clip, frozenset({"bounds"})),
    "robust_zscore": (_parse_robust_zscore, frozenset({"threshold", "action"})),
    "standardize": (_no_parameters(Standardize()), frozenset()),
    "minmax": (_no_parameters(MinMax()), frozenset()),
}


def _parse_step(position: int, raw: object, names: tuple[str, ...]) -> _Step:
    where = f"preprocess step {position}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a map with a 'step', got {type(raw).__name__}")
    if "step" not in raw:
        raise ConfigError(f"{where}: missing 'step' (the step's name)")
    kind = raw["step"]
    if not isinstance(kind, str) or kind not in _STEPS:
        known = ", ".join(_STEPS)
        raise ConfigError(f"{where}: unknown step {_shown(kind)} (known: {known})")
    where = f"{where} ({kind})"
    parse, allowed = _STEPS[kind]
    unknown = [key for key in raw if key != "step" and key not in allowed]
    if unknown:
        keys = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"{where}: unknown key {_shown(unknown[0])} (allowed: {keys})")
    return parse(raw, where, names)


def _check_feature_names(feature_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(feature_names)
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ConfigError(f"feature names must be unique strings, got {_shown(names)}")
    return names


# ---------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class Pipeline:
    """Checked steps over named features; build with :meth:`from_spec`."""

    steps: tuple[_Step, ...]
    feature_names: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: object, feature_names: Sequence[str]) -> Pipeline:
        """Parse a task's ``preprocess`` list; ConfigError naming the step for anything off.

        At most 32 steps (MAX_PREPROCESS_STEPS), each a map with a known
        ``step`` and only that step's keys, numbers finite, clip bounds on
        known features, and at most one scaling step (both would scale by
        statistics of unscaled rows).
        """
        names = _check_feature_names(feature_names)
        if not isinstance(spec, list | tuple):
            raise ConfigError(f"preprocess must be a list of steps, got {type(spec).__name__}")
        if len(spec) > MAX_PREPROCESS_STEPS:
            raise ConfigError(
                f"preprocess has {len(spec)} steps, at most {MAX_PREPROCESS_STEPS} are allowed"
            )
        steps = tuple(_parse_step(position, raw, names) for position, raw in enumerate(spec))
        scaling = [position for position, step in enumerate(steps) if step.scaling]
        if len(scaling) > 1:
            raise ConfigError(
                f"preprocess step {scaling[1]}: a second scaling step; the pooled "
                "statistics describe unscaled rows, so only one scaling step may use them"
            )
        return cls(steps, names)

    def to_spec(self) -> list[dict[str, Any]]:
        """The canonical plain-data form: every parameter explicit, clip bounds in feature order."""
        return [step.to_spec(self.feature_names) for step in self.steps]

    @property
    def scaling_position(self) -> int | None:
        """Position of the scaling step (standardize or minmax), None without one."""
        return next((i for i, step in enumerate(self.steps) if step.scaling), None)

    @property
    def has_scaling(self) -> bool:
        return self.scaling_position is not None

    def apply_until_scaling(self, table: Table) -> tuple[Table, Report]:
        """Every step before the scaling step (all of them without one): the cleaned rows.

        The statistics a node publishes for federated normalization are those
        of this table (docs/PROTOCOL.md 7.7).
        """
        stop = self.scaling_position
        return self._run(table, 0, len(self.steps) if stop is None else stop, None)

    def apply_scaling(self, table: Table, stats: GlobalStats | None) -> tuple[Table, Report]:
        """The scaling step and every step after it, on cleaned rows, with pooled ``stats``.

        Without a scaling step the table comes back as it is, with no counts.
        """
        start = self.scaling_position
        if start is None:
            return table, {}
        kind = self.steps[start].name
        stats = _needs(stats, kind)
        if stats.n_features != len(self.feature_names):
            raise ConfigError(
                f"{kind}: statistics of {stats.n_features} features "
                f"for {len(self.feature_names)} features"
            )
        return self._run(table, start, len(self.steps), stats)

    def apply(self, table: Table, stats: GlobalStats | None = None) -> tuple[Table, Report]:
        """Every step in order; ``stats`` are required when the pipeline scales."""
        position = self.scaling_position
        if position is not None:
            _needs(stats, self.steps[position].name)  # before any work
        cleaned, report = self.apply_until_scaling(table)
        scaled, more = self.apply_scaling(cleaned, stats)
        return scaled, {**report, **more}

    def _run(
        self, table: Table, start: int, stop: int, stats: GlobalStats | None
    ) -> tuple[Table, Report]:
        if table.feature_names != self.feature_names:
            raise ConfigError(
                f"the pipeline is for features {_shown(self.feature_names)}, "
                f"the rows have {_shown(table.feature_names)}"
            )
        X = table.X.copy()  # the result never shares memory with the input
        y = None if table.y is None else table.y.copy()
        report: Report = {}
        for position in range(start, stop):
            step = self.steps[position]
            X, y, report[f"{position}:{step.name}"] = step.apply(X, y, stats)
        return Table(np.ascontiguousarray(X), y, self.feature_names), report
