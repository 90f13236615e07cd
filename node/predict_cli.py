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


def run(args: argparse.Namespace) -> int:
    from fedbus.node.sources import read_csv

    model = load_any_model(args.model)
    try:
        table = read_csv(args.input, label=None, features=model.features)
    except DataError as exc:
        raise ConfigError(f"--input: {exc}") from None
    predictions = model.predict(table.X)
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
