"""Loading a device's own training data: a CSV file or a saved numpy archive."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedbus.broker.errors import ConfigError


def load_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Numeric features (float32) and integer labels (int64) from a CSV with a header.

    A cell that is not a number is an error naming its row and column, not a
    crash deep inside training.
    """
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ConfigError(f"{path}: empty file, expected a header row") from None
        if label_column not in header:
            raise ConfigError(f"{path}: no column {label_column!r} in header {header}")
        label_at = header.index(label_column)
        rows, labels = [], []
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ConfigError(
                    f"{path}:{line_number}: {len(row)} cells, header has {len(header)}"
                )
            values = []
            for column, cell in zip(header, row, strict=True):
                try:
                    values.append(float(cell))
                except ValueError:
                    raise ConfigError(
                        f"{path}:{line_number}: column {column!r} holds {cell!r}, not a number"
                    ) from None
            labels.append(values.pop(label_at))
            rows.append(values)
    features = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(header) - 1)
    label_array = np.asarray(labels)
    if not np.all(label_array == np.round(label_array)):
        raise ConfigError(f"{path}: labels in {label_column!r} must be whole numbers")
    return np.ascontiguousarray(features), label_array.astype(np.int64)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `X` and `y` from a .npz archive (no pickles are loaded)."""
    with np.load(path, allow_pickle=False) as archive:
        if "X" not in archive or "y" not in archive:
            raise ConfigError(f"{path}: expected arrays 'X' and 'y', found {list(archive)}")
        return (
            np.ascontiguousarray(archive["X"], dtype=np.float32),
            np.ascontiguousarray(archive["y"], dtype=np.int64),
        )
