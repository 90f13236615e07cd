"""Accuracy and bytes per update for each update codec, on the demo task.

Runs `fedbus demo` (real broker, aggregator process, 20-node fleet on
digits-20, same seed) once per codec for a fixed wall time, and reports the
final and best test accuracy, the time to 0.93 and the mean update payload
the aggregator received. The reference is `f32` measured in the same run:
ratios are bytes(f32) / bytes(codec) and accuracy(codec) - accuracy(f32).

    python bench/compression.py [--seconds S] [--codecs f32,q8,...] [--server-optimizer O]
                                [--payloads-only]

A second table encodes one update of three model sizes (the demo's 650
floats, a 64-128-10 MLP, a 100k-float linear model) with every codec, no
broker involved, and gives the whole payload and the tensor bytes alone
against f32: the fixed part of an update (ids, versions, names, shapes,
codec fields, about 170 bytes) is what keeps small models from the codecs'
own ratios.

Prints the tables and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fedbus.broker.codec import encode
from fedbus.broker.messages import UpdateMessage
from fedbus.broker.tensors import WireTensor
from fedbus.node.compression import CodecSpec, compress

DEFAULT_CODECS = "f32,q8,q4,topk:0.1+q8,topk:0.01+q8"


def run_demo(codec: str, seconds: float, seed: int, run_dir: Path, extra: list[str]) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedbus.broker.cli",
            "demo",
            "--nodes",
            "20",
            "--seed",
            str(seed),
            "--codec",
            codec,
            "--keep-running",
            "--max-seconds",
            str(seconds),
            "--json",
            "--no-progress",
            "--run-dir",
            str(run_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 180,
    )
    if done.returncode not in (0, 3):
        raise SystemExit(f"demo with --codec {codec} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


MODEL_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "digits softmax (650)": {"W": (64, 10), "b": (10,)},
    "MLP 64-128-10 (9,610)": {"W1": (64, 128), "b1": (128,), "W2": (128, 10), "b2": (10,)},
    "linear 1000x100 (100,100)": {"W": (1000, 100), "b": (100,)},
}


def _tensor_bytes(tensors: tuple[WireTensor, ...]) -> int:
    return sum(len(t.data) + len(t.scales or b"") + len(t.indices or b"") for t in tensors)


def payload_sizes(codecs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Bytes of one encoded update per model size and codec; ratios against f32."""
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n{'model':<27} {'codec':<14} {'payload B':>10} {'x fewer':>8} {'tensor x':>9}")
    for model, shapes in MODEL_SIZES.items():
        delta = {
            name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()
        }
        sizes = {}
        for codec in codecs:
            tensors, _ = compress(delta, {}, CodecSpec.parse(codec), seed=1)
            payload = len(encode(UpdateMessage("node-0001", 1000, 500, 128, tensors)))
            sizes[codec] = (payload, _tensor_bytes(tensors))
        rows = {}
        for codec, (payload, tensor) in sizes.items():
            ratio = sizes["f32"][0] / payload
            tensor_ratio = sizes["f32"][1] / tensor
            print(f"{model:<27} {codec:<14} {payload:>10,} {ratio:>8.2f} {tensor_ratio:>9.2f}")
            rows[codec] = {
                "payload_bytes": payload,
                "payload_ratio_vs_f32": round(ratio, 2),
                "tensor_ratio_vs_f32": round(tensor_ratio, 2),
            }
        results[model] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="training time per codec")
    parser.add_argument("--codecs", default=DEFAULT_CODECS, help="comma-separated codecs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-optimizer", default="sgd")
    parser.add_argument("--rounding", default="stochastic", help="q8/q4 rounding for the demo runs")
    parser.add_argument(
        "--payloads-only", action="store_true", help="only the payload-size table (no training)"
    )
    args = parser.parse_args(argv)
    codecs = args.codecs.split(",")
    if codecs[0] != "f32":
        codecs.insert(0, "f32")  # the reference
    if args.payloads_only:
        sizes = payload_sizes(codecs)
        print(json.dumps({"bench": "compression", "payloads": sizes}))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedbus-bench-") as tmp:
        for codec in codecs:
            summary = run_demo(
                codec,
                args.seconds,
                args.seed,
                Path(tmp) / codec.replace(":", "_").replace("+", "_"),
                ["--server-optimizer", args.server_optimizer, "--rounding", args.rounding],
            )
            results[codec] = summary
    reference = results["f32"]
    header = (
        f"{'codec':<16} {'bytes/update':>12} {'x fewer':>8} {'final acc':>9} "
        f"{'best acc':>9} {'d final':>8} {'s to 0.93':>9}"
    )
    print(header)
    rows = {}
    for codec, summary in results.items():
        ratio = reference["bytes_per_update"] / summary["bytes_per_update"]
        delta = summary["final_accuracy"] - reference["final_accuracy"]
        seconds = summary["seconds_to_target"]
        print(
            f"{codec:<16} {summary['bytes_per_update']:>12.1f} {ratio:>8.2f} "
            f"{summary['final_accuracy']:>9.4f} {summary['best_accuracy']:>9.4f} "
            f"{delta * 100:>+7.2f}p {seconds if seconds is not None else '-':>9}"
        )
        rows[codec] = {
            "bytes_per_update": summary["bytes_per_update"],
            "bytes_ratio_vs_f32": round(ratio, 3),
            "final_accuracy": summary["final_accuracy"],
            "best_accuracy": summary["best_accuracy"],
            "accuracy_points_vs_f32": round(delta * 100, 2),
            "seconds_to_target": seconds,
            "updates_accepted": summary["updates_accepted"],
        }
    sizes = payload_sizes(codecs)
    print(
        json.dumps(
            {"bench": "compression", "seconds": args.seconds, "codecs": rows, "payloads": sizes}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
