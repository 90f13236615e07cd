"""Where a device's raw rows come from: a CSV file, arrays, or a window of a sensor stream.

Every source yields a :class:`Table`: float64 features with NaN for a missing
cell, and float64 labels (or none). Cleaning is the preprocessing pipeline's
job (fedbus.node.preprocess), so a source only refuses what no step could
repair, with a DataError that names the file, the line and the column: a
cell that is not a number, an infinite reading, a row of the wrong length.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbus.broker.errors import DataError

__all__ = [
    "MISSING_TOKENS",
    "LoadReport",
    "StreamWindow",
    "Table",
    "default_feature_names",
    "from_arrays",
    "read_csv",
    "read_csv_with_report",
]

log = logging.getLogger(__name__)

#: Cell texts (after stripping blanks) that mean "no value here".
MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "?"})

_MAX_SHOWN = 40  # characters of a bad cell quoted in an error message


@dataclass(frozen=True)
class Table:
    """Rows of one device: ``X`` float64 (rows, features), NaN = missing; ``y`` float64 or None.

    The arrays are the table's own (sources copy what they are given), but
    not read-only: code that holds a Table must not write into it.
    """

    X: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.X.dtype != np.float64 or self.X.ndim != 2:
            raise ValueError(
                f"X must be float64 (rows, features), got {self.X.dtype} {self.X.shape}"
            )
        if len(self.feature_names) != self.X.shape[1]:
            raise ValueError(
                f"{len(self.feature_names)} feature names for {self.X.shape[1]} columns"
            )
        if self.y is not None and (self.y.dtype != np.float64 or self.y.shape != self.X.shape[:1]):
            raise ValueError(f"y must be float64 with one entry per row, got {self.y.shape}")


@dataclass(frozen=True)
class LoadReport:
    """What reading a file skipped: rows whose label cell was missing (nothing to learn)."""

    rows_read: int
    rows_without_label: int


def default_feature_names(n_features: int) -> tuple[str, ...]:
    """``x0, x1, ...``: the names a task without feature names uses too."""
    return tuple(f"x{i}" for i in range(n_features))


def _shown(text: str) -> str:
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...")


def _cell_value(text: str, where: str, column: str) -> float:
    """The number in a cell, NaN for a missing-value token; DataError for anything else."""
    text = text.strip()
    if text in MISSING_TOKENS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: column {column!r} holds {_shown(text)}, not a number") from None
    if math.isinf(value):
        raise DataError(f"{where}: column {column!r} holds {_shown(text)}, not a finite number")
    return value


def _unique_names(names: Sequence[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: {what} {name!r} appears twice")
        seen.add(name)


def _columns(
    header: list[str], label: str | None, features: Sequence[str] | None, where: str
) -> tuple[tuple[str, ...], list[int], int | None]:
    """Feature names, their cell positions, and the label's position, checked against the header."""
    if any(not name for name in header):
        raise DataError(f"{where}: column {header.index('') + 1} of the header has no name")
    _unique_names(header, where, "column")
    if label is not None and label not in header:
        raise DataError(f"{where}: no label column {label!r} in header {header}")
    if features is None:
        names = tuple(name for name in header if name != label)
    else:
        names = tuple(features)
        _unique_names(names, where, "feature")
        unknown = [name for name in names if name not in header]
        if unknown:
            raise DataError(f"{where}: no columns {unknown} in header {header}")
        if label is not None and label in names:
            raise DataError(f"{where}: the label column {label!r} is also listed as a feature")
    label_at = header.index(label) if label is not None else None
    return names, [header.index(name) for name in names], label_at


def read_csv_with_report(
    path: Path | str, label: str | None, features: Sequence[str] | None = None
) -> tuple[Table, LoadReport]:
    """Rows of a CSV file with a header row, and how many were skipped for a missing label.

    ``label`` names the label column (None: the rows are unlabelled);
    ``features`` picks and orders the feature columns by name (default: every
    column but the label, in file order). Other columns are not read at all,
    so a timestamp or device-id column does no harm. Cells in
    MISSING_TOKENS become NaN; blank lines are skipped. Raises DataError
    naming ``path:line`` and the column for a cell that is not a finite
    number, a row with the wrong number of cells, an unknown or repeated
    column name, an empty or unreadable file.
    """
    rows: list[list[float]] = []
    labels: list[float] = []
    unlabelled = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise DataError(f"{path}: empty file or blank first line, expected a header row")
            names, positions, label_at = _columns(header, label, features, str(path))
            for row in reader:
                if not row:
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}")
                if label_at is not None:
                    value = _cell_value(row[label_at], where, header[label_at])
                    if math.isnan(value):
                        unlabelled += 1
                        continue
                    labels.append(value)
                rows.append(
                    [_cell_value(row[p], where, n) for p, n in zip(positions, names, strict=True)]
                )
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV: {exc}") from None
    X = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    y = np.array(labels, dtype=np.float64) if label is not None else None
    report = LoadReport(rows_read=len(rows) + unlabelled, rows_without_label=unlabelled)
    return Table(X, y, names), report


def read_csv(path: Path | str, label: str | None, features: Sequence[str] | None = None) -> Table:
    """:func:`read_csv_with_report`'s table; rows skipped for a missing label are logged."""
    table, report = read_csv_with_report(path, label, features)
    if report.rows_without_label:
        log.warning(
            "%s: skipped %d of %d rows without a label %r",
            path,
            report.rows_without_label,
            report.rows_read,
            label,
        )
    return table


def _finite_or_missing(X: np.ndarray, what: str) -> None:
    infinite = np.isinf(X)
    if infinite.any():
        at = tuple(int(i) for i in np.argwhere(infinite)[0])
        raise DataError(f"{what} holds an infinite value at {at}; use NaN for a missing one")


def _as_float_array(values: object, what: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)  # always a copy
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not numeric: {exc}") from None


def from_arrays(
    X: object, y: object | None = None, feature_names: Sequence[str] | None = None
) -> Table:
    """A Table of float64 copies of ``X`` (rows, features) and ``y`` (rows,) or None.

    NaN in ``X`` marks a missing cell; labels must all be present. Default
    feature names are ``x0, x1, ...``. Raises DataError for wrong shapes,
    lengths, names or infinite values.
    """
    features = _as_float_array(X, "X")
    if features.ndim != 2:
        raise DataError(f"X must be 2-D (rows, features), got shape {features.shape}")
    _finite_or_missing(features, "X")
    labels = None
    if y is not None:
        labels = _as_float_array(y, "y")
        if labels.shape != features.shape[:1]:
            raise DataError(f"y must have shape ({len(features)},), got {labels.shape}")
        if not np.isfinite(labels).all():
            raise DataError("y holds a missing or infinite label")
    if feature_names is None:
        names = default_feature_names(features.shape[1])
    else:
        names = tuple(feature_names)
        if len(names) != features.shape[1] or not all(isinstance(n, str) for n in names):
            raise DataError(f"need {features.shape[1]} feature names (str), got {names}")
        _unique_names(names, "from_arrays", "feature")
    return Table(features, labels, names)


class StreamWindow:
    """The newest ``capacity`` rows of a sensor stream, for training on recent data.

    Its memory is allocated once: a ring buffer of ``capacity`` rows, so a
    device that streams for months holds a fixed ``nbytes``; the oldest rows
    make room for new ones (counted in ``dropped``). A lock makes it safe for
    a sensor thread to ``append`` while the training thread takes a
    ``snapshot``: a snapshot never holds part of an append.
    """

    def __init__(
        self,
        n_features: int,
        capacity: int,
        labelled: bool = True,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        if n_features < 0 or capacity < 1:
            raise ValueError(
                f"need n_features >= 0 and capacity >= 1, got {n_features}, {capacity}"
            )
        names = default_feature_names(n_features) if feature_names is None else tuple(feature_names)
        if len(names) != n_features:
            raise ValueError(f"{len(names)} feature names for {n_features} features")
        self.n_features = n_features
        self.capacity = capacity
        self.labelled = labelled
        self.feature_names = names
        self._X = np.zeros((capacity, n_features))
        self._y = np.zeros(capacity if labelled else 0)
        self._next = 0  # where the next row goes
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of row storage: fixed at construction."""
        return self._X.nbytes + self._y.nbytes

    @property
    def dropped(self) -> int:
        """Rows pushed out (or never kept) because newer rows needed their place."""
        return self._dropped

    def __len__(self) -> int:
        return self._count

    def _batch(self, rows: object, labels: object | None) -> tuple[np.ndarray, np.ndarray | None]:
        X = _as_float_array(rows, "rows")
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise DataError(f"rows must have {self.n_features} values each, got shape {X.shape}")
        _finite_or_missing(X, "rows")
        if not self.labelled:
            if labels is not None:
                raise DataError("this window is unlabelled: append rows without labels")
            return X, None
        if labels is None:
            raise DataError("this window is labelled: append needs one label per row")
        given = _as_float_array(labels, "labels")
        y = given.reshape(-1)
        if given.ndim > 1 or len(y) != len(X):
            raise DataError(f"need one label per row ({len(X)}), got shape {given.shape}")
        if not np.isfinite(y).all():
            raise DataError("labels hold a missing or infinite value; drop such rows first")
        return X, y

    def append(self, rows: object, labels: object | None = None) -> None:
        """Add one row (1-D) or a batch (2-D), oldest first; all or nothing.

        ``labels``: one per row (a number for a single row), required exactly
        when the window is labelled. NaN in a row marks a missing cell.
        Raises DataError for a wrong width, infinite values or a missing label.
        """
        X, y = self._batch(rows, labels)
        if len(X) > self.capacity:  # only the newest capacity rows could stay
            skipped = len(X) - self.capacity
            X = X[skipped:]
            y = y[skipped:] if y is not None else None
        else:
            skipped = 0
        k = len(X)
        with self._lock:
            first = min(k, self.capacity - self._next)  # rows before the buffer's end
            self._X[self._next : self._next + first] = X[:first]
            self._X[: k - first] = X[first:]
            if y is not None:
                self._y[self._next : self._next + first] = y[:first]
                self._y[: k - first] = y[first:]
            self._next = (self._next + k) % self.capacity
            overflow = max(0, self._count + k - self.capacity)
            self._count = min(self.capacity, self._count + k)
            self._dropped += skipped + overflow

    def snapshot(self) -> Table:
        """A copy of the rows now held, oldest first."""
        with self._lock:
            start = (self._next - self._count) % self.capacity
            order = (start + np.arange(self._count)) % self.capacity
            X = self._X[order]  # fancy indexing copies
            y = self._y[order] if self.labelled else None
        return Table(X, y, self.feature_names)
