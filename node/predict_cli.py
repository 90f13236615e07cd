"""`fedbus predict`: answer from a model file for the rows of a CSV, offline.

The model is a portable file from `fedbus export` (or a node's saved model
payload); the CSV needs a header naming at least the model's features, in
any order (other columns, such as a label, are ignored); missing cells are
filled as the model file says. Prints one prediction per row, or writes a
CSV with a `prediction` column.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from fedbus.broker.cli_common import command_main
from fedbus.broker.errors import ConfigError, DataError
from fedbus.node.portable import PortableModel


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a .npz from `fedbus export`, or a node's model.msgpack",
    )
    parser.add_argument("--input", type=Path, required=True, help="CSV with a header row")
    parser.add_argument(
        "--output", type=Path, default=None, help="write a CSV here instead of printing"
    )


def load_any_model(path: Path) -> PortableModel:
    """A portable file, or a saved model payload converted on the fly."""
    if path.suffix == ".npz":
        try:
            return PortableModel.load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"--model: {exc}") from None
    from fedbus.node.export_cli import export_model_message, load_model_message

    with tempfile.TemporaryDirectory(prefix="fedbus-predict-") as tmp:
        portable = Path(tmp) / "model.npz"
        try:
            export_model_message(load_model_message(path), portable)
        except ValueError as exc:
            raise ConfigError(f"--model: {exc}") from None
        return PortableModel.load(portable)


_MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "?"})


def read_feature_rows(path: Path, features: list[str]) -> np.ndarray:
    """The named columns of a CSV as float64 rows, NaN for a missing cell.

    Only the standard library and numpy: this is the path a small device runs.
    """
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file, expected a header row")
        missing = [name for name in features if name not in header]
        if missing:
            raise DataError(f"{path}: the model needs columns {missing}, header has {header}")
        columns = [header.index(name) for name in features]
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: {len(row)} cells, header has {len(header)}")
            values = []
            for column, name in zip(columns, features, strict=True):
                text = row[column].strip()
                try:
                    values.append(float("nan") if text in _MISSING else float(text))
                except ValueError:
                    raise DataError(
                        f"{path}:{line}: column {name!r} holds {text!r}, not a number"
                    ) from None
            rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(features))


def run(args: argparse.Namespace) -> int:
    model = load_any_model(args.model)
    try:
        rows = read_feature_rows(args.input, model.features)
    except DataError as exc:
        raise ConfigError(f"--input: {exc}") from None
    predictions = model.predict(rows)
    if args.output is None:
        for value in predictions:
            print(value)
        return 0
    with args.output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prediction"])
        writer.writerows([value] for value in predictions.tolist())
    print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus predict", __doc__, configure_parser, run, argv)
