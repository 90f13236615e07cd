"""`fedbus export`: write the model a node holds (or the fleet's latest) as a portable file.

The file (docs/EXPORT.md) carries weights, model spec and the inference part
of the preprocessing with the pooled statistics, and loads with numpy alone,
so a device can predict without fedbus, numba or a link. Sources: a node's
state directory (the model it last held, saved there as it arrived), a saved
model payload, or the broker's retained `model` topic.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedbus.broker.cli_common import add_bus_arguments, bus_from_args, command_main
from fedbus.broker.client import BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError, ConfigError, FedbusError
from fedbus.broker.messages import ModelMessage
from fedbus.broker.tensors import decode_weights
from fedbus.node.portable import export_portable, normalization_lists

log = logging.getLogger(__name__)

#: Where a node with a state directory keeps the last model it held.
HELD_MODEL_FILE = "model.msgpack"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--state-dir", type=Path, help=f"a node's state directory (reads {HELD_MODEL_FILE})"
    )
    source.add_argument("--model-message", type=Path, help="a saved msgpack `model` payload")
    source.add_argument(
        "--from-broker", action="store_true", help="take the retained model of --fleet"
    )
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument(
        "--int8", action="store_true", help="weight matrices as int8 with per-column scales"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the broker's model"
    )
    add_bus_arguments(parser)


def model_from_broker(args: argparse.Namespace) -> bytes:
    address, topics = bus_from_args(args)
    client = BusClient(f"fedbus-{topics.fleet}-export", address, persistent_session=False)
    client.subscribe(topics.model, qos=1)
    client.start()
    try:
        client.wait_connected(args.timeout)
        received = client.receive(args.timeout)
    finally:
        client.stop()
    if received is None:
        raise FedbusError(f"no retained model on {topics.model} within {args.timeout} s")
    return received.payload


def load_model_message(path: Path) -> ModelMessage:
    try:
        return decode(path.read_bytes(), ModelMessage)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except CodecError as exc:
        raise ConfigError(f"{path} is not a fedbus model payload: {exc}") from None


def export_model_message(model: ModelMessage, out: Path, *, int8: bool = False) -> None:
    """Write `model` (as it travels on the bus) as a portable file."""
    task = model.task
    n_features = next(iter(task.weight_shapes.values()))[0]
    export_portable(
        out,
        learner=task.learner,
        weights=decode_weights(model.tensors, task.weight_shapes),
        features=task.features or tuple(f"x{i}" for i in range(n_features)),
        preprocess=task.preprocess,
        normalization=normalization_lists(task.normalization),
        version=model.version,
        task=task.name,
        int8=int8,
    )


def run(args: argparse.Namespace) -> int:
    if args.from_broker:
        model = decode(model_from_broker(args), ModelMessage)
    else:
        path = args.model_message or args.state_dir / HELD_MODEL_FILE
        model = load_model_message(path)
    try:
        export_model_message(model, args.out, int8=args.int8)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    task = model.task
    print(f"wrote {args.out}: {task.learner} model version {model.version} of {task.name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus export", __doc__, configure_parser, run, argv)
