"""Where a node's training rows come from: a file, or a stream of sensor rows.

Named in the node's TOML file (``--config``) or with flags; flags win::

    [data]
    source = "csv"            # "csv", "npz" or "stdin"
    path = "readings.csv"     # csv and npz
    label = "fault"           # the label column (csv, stdin)
    features = ["temp", "rpm"]  # optional: feature columns by name, in order
    window = 2000             # stdin: rows kept, oldest dropped

``stdin`` reads CSV rows (header first) as another process writes them, into
a bounded window, so a device keeps training on its newest data.
"""

from __future__ import annotations

import csv
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import tomllib

from fedbus.broker.errors import ConfigError, DataError
from fedbus.node.sources import StreamWindow, Table, from_arrays, read_csv

log = logging.getLogger(__name__)

SOURCES = ("csv", "npz", "stdin")
_KEYS = {"source", "path", "label", "features", "window"}


@dataclass(frozen=True)
class DataConfig:
    source: str = "csv"
    path: Path | None = None
    label: str = "label"
    features: tuple[str, ...] | None = None
    window: int = 10_000


def load_data_config(path: Path | None, overrides: dict[str, Any]) -> DataConfig:
    """The [data] table of `path` (if any) with non-None `overrides` on top, checked."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
        values = dict(raw.get("data", {}))
        unknown = set(values) - _KEYS
        if unknown:
            raise ConfigError(f"--config [data]: unknown keys {sorted(unknown)}")
    values |= {k: v for k, v in overrides.items() if v is not None}
    source = values.get("source", "csv")
    if source not in SOURCES:
        raise ConfigError(f"data source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source != "stdin" and not values.get("path"):
        raise ConfigError(f"data source {source!r} needs a path (--data or [data] path)")
    features = values.get("features")
    if features is not None and not (
        isinstance(features, list | tuple) and all(isinstance(f, str) for f in features)
    ):
        raise ConfigError("data features must be a list of column names")
    window = values.get("window", 10_000)
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"data window must be a positive integer, got {window!r}")
    return DataConfig(
        source=source,
        path=Path(values["path"]) if values.get("path") else None,
        label=str(values.get("label", "label")),
        features=tuple(features) if features is not None else None,
        window=window,
    )


def open_source(config: DataConfig, stdin: IO[str] | None = None) -> Callable[[], Table]:
    """A row source for EdgeNode: a file read once, or a window fed from stdin."""
    if config.source == "npz":
        assert config.path is not None
        with np.load(config.path, allow_pickle=False) as archive:
            if "X" not in archive or "y" not in archive:
                raise DataError(
                    f"{config.path}: expected arrays 'X' and 'y', found {list(archive)}"
                )
            table = from_arrays(archive["X"], archive["y"])
        return lambda: table
    if config.source == "csv":
        assert config.path is not None
        table = read_csv(config.path, config.label, config.features)
        return lambda: table
    return _stdin_source(config, stdin or sys.stdin)


def _stdin_source(config: DataConfig, stream: IO[str]) -> Callable[[], Table]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("stdin: no header row") from None
    if config.label not in header:
        raise DataError(f"stdin: no column {config.label!r} in header {header}")
    names = config.features or tuple(h for h in header if h != config.label)
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"stdin: no columns {missing} in header {header}")
    columns = [header.index(n) for n in names]
    label_at = header.index(config.label)
    window = StreamWindow(len(names), config.window, feature_names=names)

    def cell(text: str, line: int, name: str) -> float:
        text = text.strip()
        if text in ("", "NA", "N/A", "NaN", "nan", "null", "?"):
            return float("nan")
        try:
            return float(text)
        except ValueError:
            raise DataError(f"stdin:{line}: column {name!r} holds {text!r}, not a number") from None

    def pump() -> None:
        for line, row in enumerate(reader, start=2):
            try:
                if len(row) != len(header):
                    raise DataError(f"stdin:{line}: {len(row)} cells, header has {len(header)}")
                values = [cell(row[c], line, n) for c, n in zip(columns, names, strict=True)]
                label = cell(row[label_at], line, config.label)
            except DataError as exc:
                log.warning("skipped a row: %s", exc)
                continue
            if np.isnan(label):
                continue  # nothing to learn from
            window.append(np.array(values), np.array([label]))
        log.info("stdin closed; training goes on with the last %d rows", len(window))

    threading.Thread(target=pump, name="stdin-rows", daemon=True).start()
    snapshot: Callable[[], Table] = window.snapshot
    return snapshot
